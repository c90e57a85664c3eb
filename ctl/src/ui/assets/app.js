// The UI's only script: the live audit tail and the routes page's inline
// transport check. Every page works without it.
"use strict";

function followAudit() {
  const rows = document.getElementById("audit-rows");
  if (!rows || !rows.dataset.follow || !window.EventSource) return;
  const state = document.getElementById("tail-state");
  const source = new EventSource(rows.dataset.follow);
  source.addEventListener("record", (event) => {
    // The cells arrive escaped by the server; they are inserted as such.
    const cells = JSON.parse(event.data);
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.innerHTML = cell;
      tr.appendChild(td);
    }
    rows.appendChild(tr);
  });
  source.addEventListener("error", () => {
    if (state) state.textContent = "Live tail interrupted; reload the page to resume.";
  });
}

function routeCheck() {
  const server = document.getElementById("downstream_server_id");
  const scope = document.getElementById("auth_scope_id");
  const out = document.getElementById("route-check");
  const compat = document.getElementById("compat");
  if (!server || !scope || !out || !compat) return;
  const update = () => {
    if (!scope.value) {
      out.textContent = "No credentials are injected for this route.";
      return;
    }
    for (const item of compat.querySelectorAll("li")) {
      if (item.dataset.server === server.value && item.dataset.scope === scope.value) {
        const badge = item.querySelector(".badge");
        out.replaceChildren(badge ? badge.cloneNode(true) : document.createTextNode(item.textContent));
        out.dataset.ok = item.dataset.ok;
        return;
      }
    }
    out.textContent = "";
  };
  server.addEventListener("change", update);
  scope.addEventListener("change", update);
  update();
}

document.addEventListener("DOMContentLoaded", () => {
  followAudit();
  routeCheck();
});
