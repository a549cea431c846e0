// Live refresh: while the instance runs, its page is fetched again every second and the
// instance's part replaced. Expanders left open stay open.
"use strict";

function refresh() {
  const live = document.getElementById("live");
  if (!live || live.dataset.live !== "on") return;
  setTimeout(async () => {
    try {
      const response = await fetch(location.href, {headers: {"X-Dashboard-Live": "1"}});
      if (response.ok) {
        const open = [...live.querySelectorAll("details")].map((d) => d.open);
        const holder = document.createElement("div");
        holder.innerHTML = await response.text();
        const fresh = holder.querySelector("#live");
        if (fresh) {
          fresh.querySelectorAll("details").forEach((d, i) => { if (open[i]) d.open = true; });
          live.replaceWith(fresh);
        }
      }
    } catch (error) {
      // The server may be restarting: try again on the next tick.
    }
    refresh();
  }, 1000);
}

document.addEventListener("DOMContentLoaded", refresh);
