// Zone pages: what a global knows of each zone (GET /zones/_overview: the Zone, its ZoneInsight with the KDS
// connection history and per-type counts, and its Online/Offline status), and the zone ingresses
// (GET /zoneingresses/_overview). A zone control plane shows its own link to global instead.
import { dpsLink, esc, match, statusCell, table, tags, zoneLink } from "./ui.js";

const subs = (z) => [...((z.zoneInsight || {}).subscriptions || [])]
  .sort((a, b) => String(a.connectTime).localeCompare(String(b.connectTime)));
const newest = (z) => subs(z).at(-1);
const total = (s) => ((s || {}).status || {}).total || {};
// Global -> zone counts: responses sent, ACKed and NACKed by the zone; zone -> global resources global refused.
const counts = (t) => esc(`${t.responsesSent ?? 0} / ${t.responsesAcknowledged ?? 0} / ${t.responsesRejected ?? 0}`);
const num = (v) => esc(v ?? "");
function lastNack(z) {
  for (const s of subs(z).reverse()) {
    for (const [type, st] of Object.entries((s.status || {}).stat || {})) {
      if (st.lastNack) return `${type}: ${st.lastNack}`;
    }
  }
  return "";
}
// API times (RFC 3339, microseconds) as "2026-12-05 20:02:53 UTC": shorter, and still exact to the second.
const when = (t) => t ? String(t).replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, " UTC") : "";
const dpsIn = (d, zone) => d.dataplanes.filter((x) => x.zone === zone).length;

export function zones(d) {
  if (d.index.mode !== "global") {
    const g = d.index.global || {};
    return `<h2>Zones</h2><p>This is ${d.index.zone ? "zone " + esc(d.index.zone) : "a standalone control plane"};`
      + ` zones are listed by the global control plane. Link to global: <code>${esc(g.state || "none")}</code></p>`
      + (Object.keys(g).length ? `<pre>${esc(JSON.stringify(g, null, 2))}</pre>` : "");
  }
  const rows = d.zones.filter((z) => match(z.name, z.zoneInsight)).map((z) => {
    const s = newest(z) || {};
    return `<tr><td>${zoneLink(d, z.name)}</td>${statusCell(z.status)}`
      + `<td>${(z.zone || {}).enabled === false ? "disabled" : "enabled"}</td>`
      + `<td>${esc(((s.version || {}).kumaCp || {}).version)}</td><td>${dpsLink({ zone: z.name }, dpsIn(d, z.name))}</td>`
      + `<td>${esc(when(s.connectTime) || "never")}</td><td>${esc(when(s.disconnectTime) || (s.connectTime ? "connected" : ""))}</td>`
      + `<td>${counts(total(s))}</td><td class="nack">${esc(lastNack(z))}</td></tr>`;
  });
  return "<h2>Zones</h2>" + table(["Zone", "Status", "Enabled", "kuma-cp", "Dataplanes", "Connected", "Disconnected",
    "Sent / ACKed / NACKed", "Last NACK"], rows);
}

export function zoneDetail(d, name) {
  const z = d.zones.find((x) => x.name === name);
  if (!z) return `<h2>Zone ${esc(name)}</h2><p class="error">Global knows no zone ${esc(name)} (a zone appears on`
    + " its first connection).</p>";
  const history = subs(z).reverse().map((s) => `<tr><td>${esc(when(s.connectTime))}</td><td>${esc(when(s.disconnectTime)
    || "connected")}</td><td>${esc(s.globalInstanceId)}</td><td>${esc(((s.version || {}).kumaCp || {}).version)}</td>`
    + `<td>${counts(total(s))}</td></tr>`);
  const stat = Object.entries(((newest(z) || {}).status || {}).stat || {}).filter(([t, st]) => match(t, st))
    .map(([t, st]) => `<tr><td>${esc(t)}</td><td>${num(st.responsesSent)}</td><td>${num(st.resourcesSent)}</td>`
      + `<td>${num(st.responsesAcknowledged)}</td><td>${num(st.responsesRejected)}</td>`
      + `<td>${num(st.responsesReceived)}</td><td>${num(st.resourcesRejected)}</td>`
      + `<td class="nack">${esc(st.lastNack)}</td></tr>`);
  const ingresses = d.ingresses.filter((i) => i.zone === name).map((i) => `<a href="#/zone-ingresses">${esc(i.name)}</a>`);
  return `<h2>Zone ${esc(name)}</h2><dl><dt>Status</dt><dd class="${esc(z.status.toLowerCase())}"`
    + ` data-zone-status>${esc(z.status)}</dd><dt>Environment</dt><dd>${esc((z.zoneInsight || {}).environment)}</dd>`
    + `<dt>Dataplanes</dt><dd>${dpsLink({ zone: name }, dpsIn(d, name))}</dd>`
    + `<dt>Zone ingresses</dt><dd>${ingresses.join(", ") || "none"}</dd></dl>`
    + "<h3>Connection history</h3>" + table(["Connected", "Disconnected", "Global instance", "kuma-cp",
      "Sent / ACKed / NACKed"], history)
    + "<h3>Sync by type (current connection)</h3>" + table(["Type", "Responses sent", "Resources sent", "ACKed",
      "NACKed", "Received from zone", "Refused from zone", "Last NACK"], stat);
}

export function zoneIngresses(d) {
  const rows = d.ingresses.filter((i) => match(i.name, i.zone, i.services)).map((i) => {
    const svc = i.services.map((s) => `${dpsLink({ service: s.tags["kuma.io/service"], mesh: s.mesh },
      s.tags["kuma.io/service"])} <small>(mesh ${esc(s.mesh)}, ${esc(s.instances)} instances)</small> ${tags(s.tags)}`);
    const warn = i.meshesWithoutMtls.length ? `<br><small class="offline">no cross-zone traffic for meshes without`
      + ` mTLS: ${esc(i.meshesWithoutMtls.join(", "))}</small>` : "";
    return `<tr><td>${esc(i.name)}</td><td>${zoneLink(d, i.zone)}</td>${statusCell(i.status)}`
      + `<td>${esc(i.address)}</td><td>${svc.join("<br>") || "none"}${warn}</td></tr>`;
  });
  return `<h2>Zone ingresses</h2>` + table(["Name", "Zone", "Status", "Address", "Available services"], rows);
}

// The ingress overview's items as the pages use them.
export function ingressRows(items, localZone) {
  return items.map((o) => {
    const zi = o.zoneIngress || {}, net = zi.networking || {};
    const addr = net.advertisedAddress ? `${net.advertisedAddress}:${net.advertisedPort}` : `${net.address}:${net.port}`;
    return { name: (zi.labels || {})["kuma.io/display-name"] || o.name, zone: zi.zone
      || (zi.labels || {})["kuma.io/zone"] || localZone || "", status: o.status, address: addr,
      services: zi.availableServices || [], meshesWithoutMtls: o.meshesWithoutMtls || [] };
  });
}
