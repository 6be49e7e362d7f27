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
  for (const [label, value] of facts(reply)) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = value;
    fields.append(dt, dd);
  }
  show(box, true);
}

// The few facts a gate needs beside the decision, in its words: never reasons or sources
// (the service sends none to a verifier), nor version numbers.
const COLOURS = { COLOUR_GREEN: "绿码 Green", COLOUR_YELLOW: "黄码 Yellow", COLOUR_RED: "红码 Red" };
function facts(reply) {
  if (!reply) return [];
  const verdict = reply.verdict || {};
  const out = [];
  if (verdict.colour in COLOURS) out.push(["码色 Colour", COLOURS[verdict.colour]]);
  if (reply.context) out.push(["场所 Where", reply.context]);
  if (reply.temperatureAlert) out.push(["体温 Temperature", "异常 Fever"]);
  if (verdict.stale) out.push(["数据 Data", "部分数据源延迟 Some feeds are late"]);
  if (reply.scanId) out.push(["核验编号 Scan no.", String(reply.scanId)]);
  return out;
}

