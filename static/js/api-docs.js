// /api/v1/docs: Swagger UI with the settings django-ninja renders (templates/ninja/swagger.html),
// in place of ninja's swagger-ui-init.js for one thing that cannot be a JSON setting: a plugin.
// It names each parameter's choice list by the parameter (Swagger UI's <select> has no label:
// axe's `select-name`), wrapping it in a <label> through Swagger UI's own plugin API.
const settings = JSON.parse(document.getElementById("swagger-settings").textContent);
const csrf = document.body.dataset.csrfToken;

function LabelledChoices() {
  return {
    wrapComponents: {
      JsonSchema_string: (Original, { React }) => (props) => {
        const choices = props.schema?.get?.("enum");
        if (!choices) return React.createElement(Original, props);
        const name = props.description || "value"; // the parameter's name, as Swagger UI passes it
        return React.createElement(
          "label",
          { className: "oc-choices" },
          React.createElement("span", { className: "oc-visually-hidden" }, name),
          React.createElement(Original, props),
        );
      },
    },
  };
}

window.ui = SwaggerUIBundle({
  ...settings,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  plugins: [LabelledChoices],
  requestInterceptor: (request) => {
    if (csrf) request.headers["X-CSRFToken"] = csrf;
    return request;
  },
});
