// A verifier's page: sign in with a staff account, paste (or type) the scanned code, and show
// the verdict Scan returns: what the verifier needs and nothing more (no reasons or sources).
import { rpc, describe, say, show } from "/static/connect.js";

const $ = (id) => document.getElementById(id);
const state = { token: "", deviceId: deviceId() };

function deviceId() {
  let id = localStorage.getItem("healthcode-scanner");
  if (!id) {
    id = "web-scanner-" + crypto.getRandomValues(new Uint32Array(2)).join("");
    localStorage.setItem("healthcode-scanner", id);
  }
  return id;
}

$("staff-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const reply = await rpc("AccountService/SignInStaff", {
      principal: $("principal").value.trim(),
      password: $("password").value,
    });
    state.token = reply.token;
    $("password").value = "";
    $("staff-who").textContent = `${$("principal").value.trim()} · ${reply.context || ""}`;
    show($("staff-sign-in"), false);
    show($("scan"), true);
    $("scan-token").focus();
  } catch (error) {
    say($("staff-message"), describe(error), "error");
  }
});

// What a refused code means at the gate, by the service's ErrorInfo reason.
const REFUSED = {
  TOKEN_REPLAYED: ["已被扫描过（复制的码）", "Already scanned once: a copied code. Ask the holder to show their live code."],
  TOKEN_EXPIRED: ["二维码已过期", "Expired: ask the holder to refresh their code."],
  TOKEN_FORGED: ["不是有效的健康码", "Not a genuine code: do not trust this screen."],
  TOKEN_MALFORMED: ["无法识别，请重扫", "Not a code token: scan again."],
};
const DECISIONS = {
  pass: ["通行", "Pass"],
  refer: ["请核查", "Refer"],
  deny: ["禁止通行", "Deny"],
};
// A verifier is shown no reasons, sources or remedies, whatever a reply carries.
const HIDDEN = /reason|source|remed|stale_?feeds|rule|override|personKey/i;
// Shown in large type already.
const SHOWN_ABOVE = new Set(["maskedName", "instruction"]);

$("scan-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    token: $("scan-token").value.replace(/\s+$/, "").replace(/^\s+/, ""),
    device: { deviceId: state.deviceId, place: $("place").value.trim() || "gate" },
  };
  try {
    const reply = await rpc("DisplayService/Scan", body, { token: state.token });
    // What the gate should do, in the service's words, when it says (`instruction`).
    render(decisionOf(reply), reply.maskedName || "", reply.instruction || "", reply);
  } catch (error) {
    // A known refusal in the gate's words; anything else as the service said it.
    const [zh, en] = REFUSED[error.reason] || ["核验失败", describe(error)];
    render("refused", zh, en, null, error.reason);
  }
});

$("clear-button").addEventListener("click", () => {
  $("scan-token").value = "";
  show($("verdict"), false);
  $("scan-token").focus();
});

// pass / refer / deny: as Scan says it, else from the live colour.
function decisionOf(reply) {
  for (const key of ["decision", "outcome", "result"]) {
    const value = reply[key] || (reply.verdict || {})[key];
    if (typeof value === "string") {
      const word = value.toLowerCase().split("_").pop();
      if (word in DECISIONS) return word;
    }
  }
  const colour = (reply.verdict || {}).colour;
  if (reply.temperatureAlert) return "refer";
  return { COLOUR_GREEN: "pass", COLOUR_YELLOW: "refer", COLOUR_RED: "deny" }[colour] || "unknown";
}

function render(decision, name, note, reply, reason = "") {
  const box = $("verdict");
  box.dataset.decision = decision;
  box.dataset.reason = reason;
  const [zh, en] = DECISIONS[decision] || (decision === "refused" ? ["拒绝", "Refused"] : ["未知", "Unknown"]);
  $("decision").textContent = `${zh} ${en}`;
  $("verdict-name").textContent = name;
  $("verdict-note").textContent = note;
  const fields = $("verdict-fields");
  fields.replaceChildren();
  for (const [key, value] of flatten(reply || {})) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = key;
    dd.textContent = value;
    fields.append(dt, dd);
  }
  show(box, true);
}

function flatten(object, prefix = "") {
  const out = [];
  for (const [key, value] of Object.entries(object)) {
    if (HIDDEN.test(key) || (!prefix && SHOWN_ABOVE.has(key))) continue;
    const name = prefix ? `${prefix}.${key}` : key;
    if (value && typeof value === "object" && !Array.isArray(value)) out.push(...flatten(value, name));
    else out.push([name, Array.isArray(value) ? value.join(", ") : String(value)]);
  }
  return out;
}
