// Browser test of the ops console, driven by tests/tests/console.rs, which
// starts a real collector and a real agent and passes everything in env vars:
//   CONSOLE_URL, ENV (protected environment), SWITCH (kill switch name),
//   FLAG (a flag defined in ENV), AGENT_API (the agent's local API URL),
//   ADMIN_USER/ADMIN_PASSWORD, OPERATOR_USER/OPERATOR_PASSWORD,
//   VIEWER_USER/VIEWER_PASSWORD, SCREENSHOT_DIR.
// Exit 0 when every scenario passed; any failure throws (exit 1).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const E = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env var ${k}`);
  return v;
};
const BASE = E("CONSOLE_URL");
const ENV = E("ENV");
const SWITCH = E("SWITCH");
const FLAG = E("FLAG");
const AGENT_API = E("AGENT_API");
const SHOTS = E("SCREENSHOT_DIR");
const users = {
  admin: [E("ADMIN_USER"), E("ADMIN_PASSWORD")],
  operator: [E("OPERATOR_USER"), E("OPERATOR_PASSWORD")],
  viewer: [E("VIEWER_USER"), E("VIEWER_PASSWORD")],
};
mkdirSync(SHOTS, { recursive: true });

const VIEWPORTS = { desktop: { width: 1280, height: 900 }, phone: { width: 390, height: 844 } };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

const cspErrors = [];
async function newPage(viewport = VIEWPORTS.desktop) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/.test(m.text())) cspErrors.push(m.text());
  });
  page.on("pageerror", (e) => cspErrors.push(String(e)));
  return page;
}

async function login(page, role) {
  const [u, p] = users[role];
  await page.goto(`${BASE}/`);
  await page.waitForURL(/\/console\/login/);
  await page.fill("input[name=username]", u);
  await page.fill("input[name=password]", p);
  await Promise.all([page.waitForURL(/\/console\/$/), page.click("button[type=submit]")]);
  await page.locator(".me .who").filter({ hasText: u }).waitFor();
}

/** Full-page screenshots at both widths, plus what a phone shows first. */
async function shoot(page, name) {
  for (const [label, vp] of Object.entries(VIEWPORTS)) {
    await page.setViewportSize(vp);
    await page.screenshot({ path: `${SHOTS}/${name}-${label}.png`, fullPage: true });
  }
  await page.screenshot({ path: `${SHOTS}/${name}-phone-first-screen.png` });
  await page.setViewportSize(VIEWPORTS.desktop);
}

/** POSTs a form from inside the page (same origin, with the session cookie). */
async function post(page, path, fields) {
  return page.evaluate(async ([path, fields]) => {
    const r = await fetch(path, {
      method: "POST",
      body: new URLSearchParams(fields),
      redirect: "manual",
      credentials: "same-origin",
    });
    return r.status;
  }, [path, fields]);
}

const csrfOf = (page) => page.locator("input[name=csrf]").first().inputValue();

async function step(name, fn) {
  const t = Date.now();
  await fn();
  console.log(`ok - ${name} (${Date.now() - t} ms)`);
}

let admin;
await step("login page and admin sign-in", async () => {
  const p = await newPage();
  await p.goto(`${BASE}/`);
  await p.waitForURL(/\/console\/login/);
  await shoot(p, "01-login");
  // a wrong password gets a clear message
  await p.fill("input[name=username]", users.admin[0]);
  await p.fill("input[name=password]", "not the password");
  await p.click("button[type=submit]");
  await p.getByText("Wrong user name or password.").waitFor();
  await p.context().close();
  admin = await newPage();
  await login(admin, "admin");
  await admin.locator(".stat.s-connected b").filter({ hasText: "1" }).waitFor();
  await shoot(admin, "02-overview");
});

await step("agents page lists the real agent", async () => {
  await admin.goto(`${BASE}/console/agents`);
  await admin.locator("td .badge.s-connected").first().waitFor();
  await shoot(admin, "03-agents");
});

await step("pull a kill switch and see the agent apply it (1 of 1)", async () => {
  await admin.goto(`${BASE}/console/killswitches?env=${ENV}`);
  const card = admin.locator(".card.switch").filter({ hasText: SWITCH });
  await card.locator(".state.alive").waitFor();
  await shoot(admin, "04-killswitches-alive");
  await card.getByRole("link", { name: `Kill ${SWITCH} in ${ENV}` }).click();
  await admin.waitForURL(/confirm/);
  await shoot(admin, "05-kill-confirm");
  await admin.fill("input[name=reason]", "browser test: payments provider outage");
  await admin.getByRole("button", { name: `Kill ${SWITCH} now` }).click();
  await admin.waitForURL(/done=killed/);
  const killed = admin.locator(".card.switch").filter({ hasText: SWITCH });
  await killed.locator(".state.killed").waitFor();
  // the live region refreshes until the real agent has acknowledged
  await killed.locator(".applied").filter({ hasText: "Applied by 1 of 1 agents" }).waitFor({ timeout: 20000 });
  const agent = await (await fetch(`${AGENT_API}/v1/killswitches/${SWITCH}`)).json();
  assert.equal(agent.killed, true, "the agent enforces the switch");
  await shoot(admin, "06-killswitches-killed");
});

await step("a CSRF-less POST is refused", async () => {
  const status = await post(admin, "/console/killswitches/revive", { env: ENV, name: SWITCH, reason: "no token" });
  assert.equal(status, 403);
  const wrong = await post(admin, "/console/killswitches/revive", { env: ENV, name: SWITCH, reason: "bad token", csrf: "opss_forged" });
  assert.equal(wrong, 403);
  await admin.reload();
  await admin.locator(".card.switch").filter({ hasText: SWITCH }).locator(".state.killed").waitFor();
});

await step("revive is just as direct", async () => {
  const card = admin.locator(".card.switch").filter({ hasText: SWITCH });
  await card.getByRole("link", { name: `Revive ${SWITCH} in ${ENV}` }).click();
  await admin.fill("input[name=reason]", "browser test: provider back");
  await admin.getByRole("button", { name: `Revive ${SWITCH} now` }).click();
  await admin.waitForURL(/done=revived/);
  await admin.locator(".card.switch").filter({ hasText: SWITCH }).locator(".state.alive").waitFor();
  await admin.locator(".card.switch .applied").filter({ hasText: "Applied by 1 of 1 agents" }).waitFor({ timeout: 20000 });
});

await step("a viewer sees no action buttons and a forged POST is refused", async () => {
  const v = await newPage();
  await login(v, "viewer");
  await v.goto(`${BASE}/console/killswitches?env=${ENV}`);
  await v.locator(".card.switch").first().waitFor();
  assert.equal(await v.locator("a.big, button.big").count(), 0, "no kill/revive buttons for a viewer");
  await shoot(v, "07-killswitches-viewer");
  await v.goto(`${BASE}/console/flags?env=${ENV}`);
  assert.equal(await v.locator("form[action='/console/flags/set']").count(), 0, "no flag forms for a viewer");
  assert.equal(await v.locator("form[action='/console/flags/preview']").count(), 0);
  await v.goto(`${BASE}/console/agents`);
  assert.equal(await v.locator("details.action").count(), 0, "no revoke for a viewer");
  // a forged POST with the viewer's own valid CSRF token: the server refuses
  const csrf = await csrfOf(v);
  const status = await post(v, "/console/killswitches/kill", { env: ENV, name: SWITCH, reason: "forged", csrf });
  assert.equal(status, 403);
  const status2 = await post(v, "/console/flags/set", { env: ENV, key: FLAG, state: "DISABLED", reason: "forged", csrf });
  assert.equal(status2, 403);
  await v.context().close();
});

let requestId;
await step("a protected flag change waits for a second person", async () => {
  const o = await newPage();
  await login(o, "operator");
  await o.goto(`${BASE}/console/flags?env=${ENV}`);
  await o.getByText("is protected").waitFor();
  await shoot(o, "08-flags");
  const card = o.locator(`#flag-${FLAG}`);
  await card.locator("select[name=state]").selectOption("DISABLED");
  await card.locator("input[name=reason]").fill("browser test: turn it off");
  await card.getByRole("button", { name: "Request change" }).click();
  await o.getByRole("heading", { name: "Waiting for approval" }).waitFor();
  requestId = (await o.locator(".flash.warn code").first().textContent()).trim();
  assert.match(requestId, /^apr_/);
  await shoot(o, "09-pending");
  // still enabled
  await o.goto(`${BASE}/console/flags?env=${ENV}`);
  await o.locator(`#flag-${FLAG} .badge.on`).waitFor();
  // the requester sees no approve button and cannot approve by POST either
  await o.goto(`${BASE}/console/approvals`);
  const mine = o.locator(`#approval-${requestId}`);
  await mine.getByText("You made this request").waitFor();
  assert.equal(await mine.getByRole("button", { name: "Approve" }).count(), 0);
  await shoot(o, "10-approvals-requester");
  const status = await post(o, `/console/approvals/${requestId}/approve`, { reason: "self", csrf: await csrfOf(o) });
  assert.equal(status, 403);
  await o.context().close();
});

await step("another user approves and the change applies", async () => {
  await admin.goto(`${BASE}/console/approvals`);
  const card = admin.locator(`#approval-${requestId}`);
  await card.locator("table.diff").waitFor();
  await shoot(admin, "11-approvals-approver");
  await card.getByRole("button", { name: "Approve" }).click();
  await admin.waitForURL(/done=approved/);
  await admin.goto(`${BASE}/console/flags?env=${ENV}`);
  await admin.locator(`#flag-${FLAG} .badge.off`).waitFor();
});

await step("flag history diff between two revisions", async () => {
  await admin.getByRole("button", { name: "Compare selected revisions" }).click();
  await admin.waitForURL(/flags\/diff/);
  await admin.locator("table.diff").waitFor();
  await shoot(admin, "12-flags-diff");
});

await step("apply a definition file with a preview first", async () => {
  await admin.goto(`${BASE}/console/flags?env=${ENV}`);
  const text = await admin.locator("#definition").inputValue();
  const def = JSON.parse(text);
  def.flags["browser-added"] = { state: "ENABLED", variants: { on: true, off: false }, defaultVariant: "off" };
  // load it as a file, as a person would (the embedded script fills the textarea)
  await admin.locator("input[type=file][data-load-into=definition]").setInputFiles({
    name: "flags.json", mimeType: "application/json", buffer: Buffer.from(JSON.stringify(def, null, 2)),
  });
  await admin.waitForFunction(() => document.getElementById("definition").value.includes("browser-added"));
  await admin.locator("form[action='/console/flags/preview'] input[name=reason]").fill("browser test: add a flag");
  await admin.getByRole("button", { name: "Preview changes" }).click();
  await admin.getByRole("heading", { name: "Preview" }).waitFor();
  await admin.locator("table.diff tr.added").first().waitFor();
  await shoot(admin, "13-flags-preview");
  // protected: applying becomes a request for the operator to approve
  await admin.getByRole("button", { name: "Request approval for these changes" }).click();
  await admin.getByRole("heading", { name: "Waiting for approval" }).waitFor();
});

await step("the audit page shows diffs and the chain verifies", async () => {
  await admin.goto(`${BASE}/console/audit?action=flags.set`);
  const entry = admin.locator(".entry").filter({ hasText: "flags.set" }).first();
  await entry.locator("table.diff").waitFor();
  await entry.getByText("approved by").waitFor();
  await admin.goto(`${BASE}/console/audit`);
  await shoot(admin, "14-audit");
  await admin.getByRole("link", { name: "Verify chain" }).click();
  await admin.getByText("The audit chain is intact").waitFor();
  await shoot(admin, "15-audit-verify");
});

await step("users and tokens: a token secret is shown once", async () => {
  await admin.goto(`${BASE}/console/users`);
  await shoot(admin, "16-users");
  const form = admin.locator("form[action='/console/tokens']");
  await form.locator("input[name=name]").fill("ci-bot");
  await form.locator("input[name=reason]").fill("browser test");
  await form.getByRole("button", { name: "Create token" }).click();
  const secret = (await admin.locator(".secret-value").textContent()).trim();
  assert.match(secret, /^opsp_/);
  await shoot(admin, "17-token-created");
});

await step("sign out ends the session", async () => {
  await admin.goto(`${BASE}/console/`);
  await admin.getByRole("button", { name: "Sign out" }).click();
  await admin.waitForURL(/login/);
  await admin.goto(`${BASE}/console/agents`);
  await admin.waitForURL(/login/);
});

await browser.close();
assert.deepEqual(cspErrors, [], "no CSP violations or script errors");
console.log("all console scenarios passed");
