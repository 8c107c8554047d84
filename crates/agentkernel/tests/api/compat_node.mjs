// Every public method of the published npm SDK (`agentkernel`) against `agentkernel serve`,
// for the compatibility table (compat.rs writes docs/compatibility.md from what this
// writes). As compat_python.py: methods that map to an endpoint this server has are called
// with the arguments of the SDK's README examples (a command swapped for one that exists
// here; the `call` column says what was sent) and must work; the others must get the
// documented refusal (404 saying the family is not implemented, 400 naming the field). A
// public method without a case is a failure.
//
// Env: AGENTKERNEL_BASE_URL, AGENTKERNEL_API_KEY, AK_NPM_SDK (the package's directory),
// AK_COMPAT_OUT (the JSON file to write).

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.env.AK_NPM_SDK;
const sdk = await import(pathToFileURL(join(dir, "dist/index.js")).href);
const { AgentKernel, SandboxSession, NotFoundError, ServerError } = sdk;
const version = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).version;

const NOT_IMPLEMENTED = "not implemented in this server";
const WORKS = "works";
const NOT_HERE = "404: family not implemented";

function expect(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const show = (value) => JSON.stringify(value);

// A remote caller's secret from the host's store: a 403 naming the [api] setting.
function refusedByPolicy(call) {
  return async (c) => {
    try {
      await call(c);
    } catch (e) {
      expect(e.message.includes("secrets_from_store"), `a 403 naming secrets_from_store: ${e}`);
      return;
    }
    throw new Error("the secret was accepted");
  };
}
const POLICY = "403: needs `secrets_from_store` under [api]";

function refusedFamily(call) {
  return async (c) => {
    try {
      await call(c);
    } catch (e) {
      expect(e instanceof NotFoundError, `a 404: ${e}`);
      expect(e.message.includes(NOT_IMPLEMENTED), `says not implemented: ${e.message}`);
      return;
    }
    throw new Error("answered as if implemented");
  };
}

const ctx = {};

const CASES = [
  ["health", "health()", WORKS, async (c) => expect((await c.health()) === "ok", "ok")],
  ["run", 'run(["echo", "hello"])', WORKS, async (c) => {
    const out = await c.run(["echo", "hello"]);
    expect(out.output === "hello\n", show(out));
  }],
  ["runStream", 'runStream(["sh", "-c", "echo one; echo two"])', WORKS, async (c) => {
    const events = [];
    for await (const event of c.runStream(["sh", "-c", "echo one; echo two"])) events.push(event);
    const text = events.filter((e) => e.type === "output").map((e) => String(e.data.data)).join("");
    expect(text === "one\ntwo\n", show(text));
    const done = events[events.length - 1];
    expect(done.type === "done" && done.data.exit_code === 0, show(done));
  }],
  ["batchRun", 'batchRun([{command: ["echo", "a"]}, {command: ["echo", "b"]}])', WORKS, async (c) => {
    const out = await c.batchRun([{ command: ["echo", "a"] }, { command: ["echo", "b"] }]);
    expect(show(out.results.map((r) => r.output)) === show(["a\n", "b\n"]), show(out));
  }],
  ["createSandbox", 'createSandbox("my-sandbox")', WORKS, async (c) => {
    const info = await c.createSandbox("my-sandbox");
    expect(info.status === "running" && info.name === "my-sandbox", show(info));
    ctx.uuid = info.uuid;
  }],
  // The README's examples with a local repository (no github here) and the host image;
  // the volumes were created with the CLI first, as the SDKs document.
  ["createSandbox", 'createSandbox("my-project", {source_url: "file:///<a local repository>", source_ref: "main"})',
    WORKS, async (c) => {
      const info = await c.createSandbox("my-project", { source_url: process.env.AK_COMPAT_REPO, source_ref: "main" });
      try {
        const out = await c.execInSandbox("my-project", ["cat", "README.md"]);
        expect(out.output === "cloned\n", `the clone's README: ${show(out.output)}`);
      } finally {
        await c.removeSandbox("my-project");
      }
      expect(info.status === "running", show(info));
    }],
  ["createSandbox", 'createSandbox("my-project", {volumes: ["mydata:/data", "cache:/tmp/cache:ro"]})',
    WORKS, async (c) => {
      await c.createSandbox("my-project", { volumes: ["mydata:/data", "cache:/tmp/cache:ro"] });
      try {
        const out = await c.execInSandbox("my-project",
          ["sh", "-c", "echo kept > /data/f && cat /data/f && if touch /tmp/cache/x 2>/dev/null; then echo writable; else echo read-only; fi"]);
        expect(out.output === "kept\nread-only\n", `volumes: ${show(out.output)}`);
      } finally {
        await c.removeSandbox("my-project");
      }
    }],
  ["createSandbox", 'createSandbox("my-project", {secrets: ["OPENAI_API_KEY:api.openai.com"]})',
    POLICY, refusedByPolicy((c) => c.createSandbox("my-project", {
      secrets: ["OPENAI_API_KEY:api.openai.com"] }))],
  ["createSandbox", 'createSandbox("my-project", {secret_files: ["OPENAI_API_KEY"]})',
    POLICY, refusedByPolicy((c) => c.createSandbox("my-project", {
      secret_files: ["OPENAI_API_KEY"] }))],
  ["listSandboxes", "listSandboxes()", WORKS, async (c) => {
    const names = (await c.listSandboxes()).map((s) => s.name);
    expect(names.includes("my-sandbox"), show(names));
  }],
  ["getSandbox", 'getSandbox("my-sandbox")', WORKS, async (c) => {
    const info = await c.getSandbox("my-sandbox");
    expect(info.status === "running", show(info));
  }],
  ["getSandboxByUuid", "getSandboxByUuid(uuid)", WORKS, async (c) => {
    const info = await c.getSandboxByUuid(ctx.uuid);
    expect(info.name === "my-sandbox", show(info));
  }],
  ["writeFile", 'writeFile("my-sandbox", "app/main.py", "print(\'hello\')")', WORKS,
    async (c) => { await c.writeFile("my-sandbox", "app/main.py", "print('hello')"); }],
  ["readFile", 'readFile("my-sandbox", "app/main.py")', WORKS, async (c) => {
    const file = await c.readFile("my-sandbox", "app/main.py");
    expect(file.content === "print('hello')", show(file));
  }],
  ["execInSandbox", 'execInSandbox("my-sandbox", ["sh", "-c", "echo $NODE_ENV; pwd; id -u"], {workdir: "/app", env: ["NODE_ENV=production"], sudo: true})',
    WORKS, async (c) => {
      const out = await c.execInSandbox("my-sandbox", ["sh", "-c", "echo $NODE_ENV; pwd; id -u"],
        { workdir: "/app", env: ["NODE_ENV=production"], sudo: true });
      expect(out.output === "production\n/app\n0\n", show(out));
    }],
  ["deleteFile", 'deleteFile("my-sandbox", "app/main.py")', WORKS, async (c) => {
    await c.deleteFile("my-sandbox", "app/main.py");
    try {
      await c.readFile("my-sandbox", "app/main.py");
    } catch (e) {
      expect(e instanceof NotFoundError, `${e}`);
      return;
    }
    throw new Error("the deleted file is still there");
  }],
  ["writeFiles", 'writeFiles("my-sandbox", {"/app/index.js": …, "/app/package.json": …}), then readFile("my-sandbox", "app/index.js")',
    WORKS, async (c) => {
      const out = await c.writeFiles("my-sandbox", {
        "/app/index.js": "console.log('hi')",
        "/app/package.json": '{"name":"app"}',
      });
      expect(out.written === 2, show(out));
      const file = await c.readFile("my-sandbox", "app/index.js");
      expect(file.content === "console.log('hi')", show(file));
    }],
  ["getSandboxLogs", 'getSandboxLogs("my-sandbox")', WORKS, async (c) => {
    const actions = new Set((await c.getSandboxLogs("my-sandbox")).map((e) => e.action));
    for (const action of ["create", "exec", "file_write", "file_read"]) {
      expect(actions.has(action), `${action} in ${show([...actions])}`);
    }
  }],
  ["execDetached", 'execDetached("my-sandbox", ["sh", "-c", "echo training; echo warn >&2; sleep 30"])', WORKS, async (c) => {
    const cmd = await c.execDetached("my-sandbox", ["sh", "-c", "echo training; echo warn >&2; sleep 30"]);
    expect(cmd.status === "running" && cmd.pid > 0, show(cmd));
    ctx.cmd = cmd.id;
  }],
  ["detachedStatus", 'detachedStatus("my-sandbox", cmd.id)', WORKS, async (c) => {
    const status = await c.detachedStatus("my-sandbox", ctx.cmd);
    expect(status.status === "running", show(status));
  }],
  ["detachedLogs", 'detachedLogs("my-sandbox", cmd.id), and with "stderr"', WORKS, async (c) => {
    // The shell writes "warn" after "training": wait for both, not just the first.
    let logs;
    for (let i = 0; i < 100; i++) {
      logs = await c.detachedLogs("my-sandbox", ctx.cmd);
      if (logs.stdout === "training\n" && logs.stderr === "warn\n") break;
      await sleep(50);
    }
    expect(logs.stdout === "training\n" && logs.stderr === "warn\n", show(logs));
    const stderr = await c.detachedLogs("my-sandbox", ctx.cmd, "stderr");
    expect(stderr.stderr === "warn\n" && !stderr.stdout, show(stderr));
  }],
  ["detachedList", 'detachedList("my-sandbox")', WORKS, async (c) => {
    const ids = (await c.detachedList("my-sandbox")).map((d) => d.id);
    expect(show(ids) === show([ctx.cmd]), show(ids));
  }],
  ["detachedKill", 'detachedKill("my-sandbox", cmd.id)', WORKS, async (c) => {
    await c.detachedKill("my-sandbox", ctx.cmd);
    let status;
    for (let i = 0; i < 100; i++) {
      status = await c.detachedStatus("my-sandbox", ctx.cmd);
      if (status.status !== "running") break;
      await sleep(50);
    }
    expect(status.status === "failed", show(status));
  }],
  ["extendTtl", 'extendTtl("my-sandbox", {by: "1h"})', WORKS, async (c) => {
    const out = await c.extendTtl("my-sandbox", { by: "1h" });
    expect(typeof out.expires_at === "string" && out.expires_at.endsWith("Z"), show(out));
  }],
  ["takeSnapshot", 'takeSnapshot({sandbox: "my-sandbox", name: "snap"})', WORKS, async (c) => {
    const meta = await c.takeSnapshot({ sandbox: "my-sandbox", name: "snap" });
    expect(meta.name === "snap" && meta.sandbox === "my-sandbox" && meta.backend === "native", show(meta));
  }],
  ["listSnapshots", "listSnapshots()", WORKS, async (c) => {
    const names = (await c.listSnapshots()).map((s) => s.name);
    expect(names.includes("snap"), show(names));
  }],
  ["getSnapshot", 'getSnapshot("snap")', WORKS, async (c) => {
    const meta = await c.getSnapshot("snap");
    expect(meta.name === "snap" && meta.created_at.endsWith("Z"), show(meta));
  }],
  ["restoreSnapshot", 'restoreSnapshot("snap"), then readFile(restored, "app/index.js")', WORKS, async (c) => {
    const info = await c.restoreSnapshot("snap");
    expect(info.status === "running" && info.name.startsWith("snap-"), show(info));
    const file = await c.readFile(info.name, "app/index.js");
    expect(file.content === "console.log('hi')", show(file));
    await c.removeSandbox(info.name);
  }],
  ["deleteSnapshot", 'deleteSnapshot("snap")', WORKS, async (c) => {
    await c.deleteSnapshot("snap");
    try {
      await c.getSnapshot("snap");
    } catch (e) {
      expect(e instanceof NotFoundError, `${e}`);
      return;
    }
    throw new Error("deleted, yet found");
  }],
  ["removeSandbox", 'removeSandbox("my-sandbox")', WORKS, async (c) => {
    await c.removeSandbox("my-sandbox");
    try {
      await c.getSandbox("my-sandbox");
    } catch (e) {
      expect(e instanceof NotFoundError, `${e}`);
      return;
    }
    throw new Error("removed, yet found");
  }],
  ["sandbox", 'sandbox("dev")', WORKS, async (c) => {
    ctx.session = await c.sandbox("dev");
    expect(ctx.session.name === "dev", "session");
  }],
  ["SandboxSession.info", "sb.info()", WORKS, async () => {
    const info = await ctx.session.info();
    expect(info.name === "dev" && info.status === "running", show(info));
  }],
  ["SandboxSession.writeFiles", 'sb.writeFiles({"/app/requirements.txt": "numpy\\n"})', WORKS, async () => {
    const out = await ctx.session.writeFiles({ "/app/requirements.txt": "numpy\n" });
    expect(out.written === 1, show(out));
  }],
  ["SandboxSession.run", 'sb.run(["sh", "-c", "pwd"], {workdir: "/app", sudo: true})', WORKS, async () => {
    const out = await ctx.session.run(["sh", "-c", "pwd"], { workdir: "/app", sudo: true });
    expect(out.output === "/app\n", show(out));
  }],
  ["SandboxSession.remove", "sb.remove() (twice)", WORKS, async (c) => {
    await ctx.session.remove();
    await ctx.session.remove();
    const names = (await c.listSandboxes()).map((s) => s.name);
    expect(!names.includes("dev"), show(names));
  }],
  ["browser", 'browser("my-browser")', "503: Docker Hub unreachable here", async (c) => {
    // It creates a sandbox from python:3.12-slim and installs Playwright and Chromium in
    // it: the native server pulls that image from Docker Hub, which is out of reach here,
    // and says so without leaving a sandbox.
    try {
      await c.browser("my-browser");
    } catch (e) {
      expect(e instanceof ServerError && e.message.includes("index.docker.io is unreachable"), `says why: ${e}`);
      const names = (await c.listSandboxes()).map((s) => s.name);
      expect(!names.includes("my-browser"), show(names));
      return;
    }
    throw new Error("a browser sandbox was made");
  }],
  ["listOrchestrations", "listOrchestrations()", NOT_HERE, refusedFamily((c) => c.listOrchestrations())],
  ["createOrchestration", 'createOrchestration({name: "o"})', NOT_HERE, refusedFamily((c) => c.createOrchestration({ name: "o" }))],
  ["getOrchestration", 'getOrchestration("o1")', NOT_HERE, refusedFamily((c) => c.getOrchestration("o1"))],
  ["signalOrchestration", 'signalOrchestration("o1", {name: "go"})', NOT_HERE, refusedFamily((c) => c.signalOrchestration("o1", { name: "go" }))],
  ["terminateOrchestration", 'terminateOrchestration("o1")', NOT_HERE, refusedFamily((c) => c.terminateOrchestration("o1"))],
  ["listOrchestrationDefinitions", "listOrchestrationDefinitions()", NOT_HERE, refusedFamily((c) => c.listOrchestrationDefinitions())],
  ["upsertOrchestrationDefinition", 'upsertOrchestrationDefinition({name: "d"})', NOT_HERE, refusedFamily((c) => c.upsertOrchestrationDefinition({ name: "d" }))],
  ["getOrchestrationDefinition", 'getOrchestrationDefinition("d")', NOT_HERE, refusedFamily((c) => c.getOrchestrationDefinition("d"))],
  ["deleteOrchestrationDefinition", 'deleteOrchestrationDefinition("d")', NOT_HERE, refusedFamily((c) => c.deleteOrchestrationDefinition("d"))],
  ["listObjects", "listObjects()", NOT_HERE, refusedFamily((c) => c.listObjects())],
  ["createObject", 'createObject({class: "Counter"})', NOT_HERE, refusedFamily((c) => c.createObject({ class: "Counter" }))],
  ["getObject", 'getObject("c1")', NOT_HERE, refusedFamily((c) => c.getObject("c1"))],
  ["callObject", 'callObject("Counter", "c1", "increment")', NOT_HERE, refusedFamily((c) => c.callObject("Counter", "c1", "increment"))],
  ["deleteObject", 'deleteObject("c1")', NOT_HERE, refusedFamily((c) => c.deleteObject("c1"))],
  ["patchObject", 'patchObject("c1", {status: "idle"})', NOT_HERE, refusedFamily((c) => c.patchObject("c1", { status: "idle" }))],
  ["listSchedules", "listSchedules()", NOT_HERE, refusedFamily((c) => c.listSchedules())],
  ["createSchedule", 'createSchedule({cron: "* * * * *"})', NOT_HERE, refusedFamily((c) => c.createSchedule({ cron: "* * * * *" }))],
  ["getSchedule", 'getSchedule("s1")', NOT_HERE, refusedFamily((c) => c.getSchedule("s1"))],
  ["deleteSchedule", 'deleteSchedule("s1")', NOT_HERE, refusedFamily((c) => c.deleteSchedule("s1"))],
  ["listStores", "listStores()", NOT_HERE, refusedFamily((c) => c.listStores())],
  ["createStore", 'createStore({name: "kv"})', NOT_HERE, refusedFamily((c) => c.createStore({ name: "kv" }))],
  ["getStore", 'getStore("kv")', NOT_HERE, refusedFamily((c) => c.getStore("kv"))],
  ["deleteStore", 'deleteStore("kv")', NOT_HERE, refusedFamily((c) => c.deleteStore("kv"))],
  ["queryStore", 'queryStore("kv", {sql: "select 1"})', NOT_HERE, refusedFamily((c) => c.queryStore("kv", { sql: "select 1" }))],
  ["executeStore", 'executeStore("kv", {sql: "delete from t"})', NOT_HERE, refusedFamily((c) => c.executeStore("kv", { sql: "delete from t" }))],
  ["commandStore", 'commandStore("kv", {command: ["PING"]})', NOT_HERE, refusedFamily((c) => c.commandStore("kv", { command: ["PING"] }))],
];

// Public methods: the prototype's own functions, without the constructor and the
// private helpers TypeScript compiles to plain methods (declared `private` in index.d.ts).
const declarations = readFileSync(join(dir, "dist/index.d.ts"), "utf8");
function publicMethods(cls, prefix) {
  return Object.getOwnPropertyNames(cls.prototype)
    .filter((name) => name !== "constructor" && typeof cls.prototype[name] === "function")
    .filter((name) => !new RegExp(`private ${name}[;:(]`).test(declarations))
    .map((name) => prefix + name);
}

const methods = new Set([...publicMethods(AgentKernel, ""), ...publicMethods(SandboxSession, "SandboxSession.")]);
const client = new AgentKernel({ timeout: 60000 });
const sdkName = `npm ${version}`;
const rows = [];
for (const [method, call, expected, run] of CASES) {
  if (!methods.has(method)) continue;
  let result = "pass";
  try {
    await run(client);
  } catch (e) {
    result = `FAIL: ${e?.name ?? "Error"}: ${e?.message ?? e}`;
  }
  rows.push({ sdk: sdkName, method, call, expected, result });
}
const covered = new Set(CASES.map(([method]) => method));
for (const method of [...methods].filter((m) => !covered.has(m)).sort()) {
  rows.push({ sdk: sdkName, method, call: "", expected: "a case in compat_node.mjs",
    result: "FAIL: a public method this test does not call" });
}
writeFileSync(process.env.AK_COMPAT_OUT, JSON.stringify(rows, null, 1));
const failed = rows.filter((r) => r.result !== "pass");
for (const row of failed) console.log(`${row.sdk} ${row.method}: ${row.result}`);
console.log(`${rows.length - failed.length} passed, ${failed.length} failed`);
