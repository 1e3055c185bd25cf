// Keeps the dashboard live. The overview polls /dashboard/usage.json every 2 s and updates the rows in
// place (moving, not re-creating, them, so an expanded row stays open); a tenant's page polls
// /dashboard/tenants/<id>/usage.json and updates its figures, chart, features, reservations and alerts. The server
// computes every label and the chart's coordinates; this only sets text and attributes, never innerHTML.
"use strict";
(function () {
  const EVERY_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const number = new Intl.NumberFormat("en-US");
  const live = document.getElementById("live");
  const asOf = document.getElementById("as-of");

  function text(node, value) {
    if (node.textContent !== value) node.textContent = value;
  }

  function setLevel(node, level) {
    node.classList.remove("level-ok", "level-amber", "level-red");
    node.classList.add(level);
  }

  function rows(body, items, empty, cells) {
    body.replaceChildren();
    if (items.length === 0) {
      const tr = body.insertRow();
      tr.className = "none";
      const td = tr.insertCell();
      td.colSpan = empty.columns;
      td.textContent = empty.text;
      return;
    }
    for (const item of items) {
      const tr = body.insertRow();
      for (const cell of cells(item)) {
        const td = tr.insertCell();
        if (cell instanceof Node) td.appendChild(cell);
        else td.textContent = cell;
      }
    }
  }

  function features(body, items) {
    rows(body, items, { columns: 2, text: "No usage this period yet." },
      (row) => [row.feature, number.format(row.tokens)]);
  }

  function poll(url, render) {
    async function once() {
      try {
        const response = await fetch(url, {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
        });
        if (response.status === 401 || response.status === 404) {
          window.location.reload(); // signed out, or the tenant is gone: show what the server says
          return;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        const data = await response.json();
        render(data);
        asOf.setAttribute("datetime", data.as_of);
        text(asOf, data.as_of.slice(11, 19) + " UTC");
        live.classList.remove("stale");
      } catch (error) {
        live.classList.add("stale");
      }
      window.setTimeout(once, EVERY_MS);
    }
    window.setTimeout(once, EVERY_MS);
  }

  // -- the overview ---------------------------------------------------------------------------

  function overview(list, blank) {
    const empty = document.getElementById("empty");

    function rowFor(tenant) {
      for (const item of list.children) {
        if (item.dataset.id === tenant.id) return item;
      }
      const item = blank.content.firstElementChild.cloneNode(true);
      item.dataset.id = tenant.id;
      item.querySelector("a.more").setAttribute("href", "/tenants/" + encodeURIComponent(tenant.id));
      return item;
    }

    function update(item, tenant) {
      text(item.querySelector(".name"), tenant.name);
      text(item.querySelector(".percent"), tenant.percent_label);
      text(item.querySelector(".used"), number.format(tenant.used));
      text(item.querySelector(".quota"), number.format(tenant.quota));
      text(item.querySelector(".period-end"), tenant.period_end.slice(0, 10));
      text(item.querySelector(".last-hour"), number.format(tenant.last_hour));
      setLevel(item.querySelector(".percent"), tenant.level);
      const fill = item.querySelector(".bar .fill");
      fill.setAttribute("width", String(Math.min(tenant.percent, 100)));
      item.querySelector(".bar").setAttribute("aria-label", tenant.percent_label + " of quota used");
      setLevel(fill, tenant.level);
      item.dataset.percent = String(tenant.percent);
      features(item.querySelector(".features tbody"), tenant.by_feature);
    }

    poll("/dashboard/usage.json", (data) => {
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
    });
  }

  // -- one tenant -----------------------------------------------------------------------------

  function svg(name, attributes, content) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function chart(node, data) {
    const axis = node.querySelector("line.axis");
    const left = axis.getAttribute("x1");
    const right = axis.getAttribute("x2");
    node.setAttribute("aria-label", data.aria_label);
    node.querySelector("polyline.usage").setAttribute("points", data.points);
    const quota = node.querySelector("line.quota");
    quota.setAttribute("y1", data.quota_y);
    quota.setAttribute("y2", data.quota_y);
    const label = node.querySelector("text.quota-label");
    label.setAttribute("y", (data.quota_y - 6).toFixed(1));
    text(label, data.quota_label);
    const ticks = [];
    for (const tick of data.ticks) {
      ticks.push(svg("line", { class: "grid", x1: left, y1: tick.y, x2: right, y2: tick.y }));
      ticks.push(svg("text", { class: "label", x: left - 6, y: (tick.y + 4).toFixed(1), "text-anchor": "end" },
        tick.label));
    }
    node.querySelector("g.ticks").replaceChildren(...ticks);
    text(node.querySelector("text.label.start"), data.start_label);
    text(node.querySelector("text.label.end"), data.end_label);
  }

  function exactTime(iso, label) {
    const node = document.createElement("time");
    node.setAttribute("datetime", iso);
    node.title = iso;
    node.textContent = label;
    return node;
  }

  function tenantPage(page) {
    const byId = (id) => document.getElementById(id);
    poll("/dashboard/tenants/" + encodeURIComponent(page.dataset.id) + "/usage.json", (data) => {
      const tenant = data.tenant;
      text(byId("used"), number.format(tenant.used));
      text(byId("quota"), number.format(tenant.quota));
      text(byId("percent"), tenant.percent_label);
      setLevel(byId("percent"), tenant.level);
      text(byId("period"), tenant.period_label);
      text(byId("billing-day"), String(tenant.billing_day));
      text(byId("last-hour"), number.format(tenant.last_hour));
      text(byId("reserved"), data.reserved_label);
      rows(byId("reservations"), data.reservations, { columns: 3, text: data.reservations_note }, (hold) => [
        hold.id,
        number.format(hold.tokens),
        exactTime(hold.expires_at, hold.expires_label),
      ]);
      text(byId("thresholds"), data.thresholds);
      chart(byId("chart"), data.chart);
      features(byId("features"), tenant.by_feature);
      rows(byId("alerts"), data.alerts, { columns: 4, text: "No alerts yet." }, (alert) => [
        exactTime(alert.created_at, alert.created_label),
        alert.threshold + " %",
        number.format(alert.used) + " / " + number.format(alert.quota),
        alert.deliveries,
      ]);
    });
  }

  const list = document.getElementById("tenants");
  const blank = document.getElementById("tenant-row");
  const page = document.getElementById("tenant-page");
  if (list && blank) overview(list, blank);
  else if (page) tenantPage(page);
})();
