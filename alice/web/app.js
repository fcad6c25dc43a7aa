/* ALICE web page: the entry module. Plain JavaScript modules, no build step, nothing from
 * the internet; lib/ holds what the pages share, pages/ one module per page (and its parts).
 *
 * Every piece of text that came from a user or the server is put into the page with
 * textContent (or as a text node), never parsed as HTML. The API key lives in localStorage
 * and travels only in the Authorization header of fetch calls, never in a URL.
 */
import { startHealthPill } from "./lib/health.js";
import { startRouter } from "./lib/router.js";
import { dashboard } from "./pages/dashboard.js";
import { gallery } from "./pages/gallery.js";
import { generate } from "./pages/generate.js";
import { models } from "./pages/models.js";
import { queue } from "./pages/queue.js";
import { settings } from "./pages/settings.js";

// The key is the page's name in the URL (#/name) and in its section's id (#page-name).
const PAGES = { dashboard, generate, gallery, models, queue, settings };

for (const page of Object.values(PAGES)) {
  if (page.wire) page.wire();
}
startHealthPill();
startRouter(PAGES);
