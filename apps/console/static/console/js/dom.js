// Small DOM and formatting helpers: build elements without innerHTML (text stays text).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function since(iso) {
  if (!iso) return "—";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${seconds % 60}s`;
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

// Ages and "last activity": every [data-since] element shows the time since its moment.
export function refreshAges(root = document) {
  for (const node of root.querySelectorAll("[data-since]")) {
    const age = since(node.dataset.since);
    node.textContent = node.tagName === "TIME" ? `${age} ago` : age;
  }
}

export function tickAges() {
  refreshAges();
  setInterval(refreshAges, 1000);
}

export function millis(fromIso, toIso) {
  if (!fromIso || !toIso) return null;
  return Date.parse(toIso) - Date.parse(fromIso);
}

// Clock times in the operator's timezone: their setting (the page's `data-tz`), else the browser's.
const zone = document.body.dataset.tzChosen || undefined;
const clockFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZone: zone });
const zoneFormat = new Intl.DateTimeFormat(undefined, { timeZoneName: "short", timeZone: zone });

export function clock(iso) {
  if (!iso) return "";
  return clockFormat.format(new Date(iso));
}

export function zoneName(iso) {
  return zoneFormat.formatToParts(new Date(iso)).find((part) => part.type === "timeZoneName")?.value ?? "";
}

// Every <time data-clock datetime=…>: the time of day there, with the zone's name when asked.
export function refreshClocks(root = document) {
  for (const node of root.querySelectorAll("time[data-clock]")) {
    const iso = node.getAttribute("datetime");
    node.textContent = node.dataset.clock === "zone" ? `${clock(iso)} ${zoneName(iso)}` : clock(iso);
    node.title = new Date(iso).toISOString();
  }
}

// Dollars as the console shows them, to the hundredth of a cent.
export const money = (usd) => `$${usd.toFixed(4)}`;
