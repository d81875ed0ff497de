// Inputs marked data-select-on-focus select their whole text when clicked or focused (a token
// to copy), without an inline handler the Content-Security-Policy would refuse.
for (const input of document.querySelectorAll("[data-select-on-focus]")) {
  input.addEventListener("focus", () => input.select());
  input.addEventListener("click", () => input.select());
}
