// Keeps the tenant list live: polls /dashboard/usage.json every 2 s and updates the rows in place
// (moving, not re-creating, them, so an expanded row stays open). Text only, never innerHTML.
"use strict";
(function () {
  const list = document.getElementById("tenants");
  const blank = document.getElementById("tenant-row");
  if (!list || !blank) return;
  const EVERY_MS = 2000;
  const number = new Intl.NumberFormat("en-US");
  const live = document.getElementById("live");
  const asOf = document.getElementById("as-of");
  const empty = document.getElementById("empty");

  function text(root, selector, value) {
    const node = root.querySelector(selector);
    if (node.textContent !== value) node.textContent = value;
  }

  function setLevel(node, level) {
    node.classList.remove("level-ok", "level-amber", "level-red");
    node.classList.add(level);
  }

  function rowFor(tenant) {
    for (const item of list.children) {
      if (item.dataset.id === tenant.id) return item;
    }
    const item = blank.content.firstElementChild.cloneNode(true);
    item.dataset.id = tenant.id;
    item.querySelector("a.more").setAttribute("href", "/tenants/" + encodeURIComponent(tenant.id));
    return item;
  }

  function features(body, rows) {
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = body.insertRow();
      tr.className = "none";
      const td = tr.insertCell();
      td.colSpan = 2;
      td.textContent = "No usage this period yet.";
      return;
    }
    for (const row of rows) {
      const tr = body.insertRow();
      tr.insertCell().textContent = row.feature;
      tr.insertCell().textContent = number.format(row.tokens);
    }
  }

  function update(item, tenant) {
    text(item, ".name", tenant.name);
    text(item, ".percent", tenant.percent + " %");
    text(item, ".used", number.format(tenant.used));
    text(item, ".quota", number.format(tenant.quota));
    text(item, ".period-end", tenant.period_end.slice(0, 10));
    text(item, ".last-hour", number.format(tenant.last_hour));
    setLevel(item.querySelector(".percent"), tenant.level);
    const fill = item.querySelector(".bar .fill");
    fill.setAttribute("width", String(Math.min(tenant.percent, 100)));
    item.querySelector(".bar").setAttribute("aria-label", tenant.percent + " % of quota used");
    setLevel(fill, tenant.level);
    item.dataset.percent = String(tenant.percent);
    features(item.querySelector(".features tbody"), tenant.by_feature);
  }

  function render(data) {
    const seen = new Set();
    for (const tenant of data.tenants) {
      const item = rowFor(tenant);
      update(item, tenant);
      list.appendChild(item); // appending in order sorts the list
      seen.add(tenant.id);
    }
    for (const item of Array.from(list.children)) {
      if (!seen.has(item.dataset.id)) item.remove();
    }
    empty.hidden = data.tenants.length > 0;
    asOf.setAttribute("datetime", data.as_of);
    asOf.textContent = data.as_of.slice(11, 19) + " UTC";
    live.classList.remove("stale");
  }

  async function poll() {
    try {
      const response = await fetch("/dashboard/usage.json", {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
      });
      if (response.status === 401) {
        window.location.reload(); // signed out: show the login page
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (error) {
      live.classList.add("stale");
    }
    window.setTimeout(poll, EVERY_MS);
  }

  window.setTimeout(poll, EVERY_MS);
})();
