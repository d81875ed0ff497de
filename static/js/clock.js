// Every page: tell the server the browser's timezone (the `oc_tz` cookie), the default for
// times on the pages it renders, and show each <time data-clock> in the operator's zone.
import { refreshClocks } from "/static/console/js/dom.js";

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
if (zone && !document.cookie.split("; ").includes(`oc_tz=${encodeURIComponent(zone)}`)) {
  document.cookie = `oc_tz=${encodeURIComponent(zone)}; path=/; max-age=31536000; samesite=lax`;
}
refreshClocks();
