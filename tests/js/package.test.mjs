// The @archmesh/realtime package itself: what `npm pack` puts in the tarball, that the file a
// gateway serves is the packed file byte for byte, and that the hand-written declarations
// describe the module (tsc --strict over the consumers in types/, in a browser setting and
// a Node one).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Gateway, ROOT, freePort } from "./gateway.mjs";
import { NAME, installPackage } from "./package.mjs";

const TESTS = path.dirname(fileURLToPath(import.meta.url));
const SOURCE = path.join(ROOT, "gateway", "static", "archmesh-realtime.js");
const TSC = path.join(TESTS, "node_modules", "typescript", "bin", "tsc");
const EXPORTS = [
  "ArchMeshInbox",
  "ArchMeshRealtime",
  "InboxError",
  "RealtimeError",
  "State",
  "backoffDelay",
  "default",
  "shouldReconnect",
];

const pkg = await installPackage();
let gateway;

before(async () => {
  gateway = new Gateway(await freePort());
  await gateway.start();
});

after(async () => {
  await gateway?.stop();
  pkg.remove();
});

test("the tarball holds the module, its declarations and docs, and no dependencies", () => {
  const files = pkg.packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, [
    "LICENSE",
    "README.md",
    "archmesh-realtime.d.ts",
    "archmesh-realtime.js",
    "package.json",
  ]);
  const manifest = JSON.parse(readFileSync(path.join(pkg.installed, "package.json"), "utf8"));
  assert.equal(manifest.name, NAME);
  assert.equal(manifest.version, "0.1.0");
  assert.equal(manifest.license, "MIT");
  assert.equal(manifest.type, "module");
  assert.equal(manifest.engines.node, ">=20");
  assert.equal(manifest.types, "./archmesh-realtime.d.ts");
  assert.deepEqual(manifest.exports["."], {
    types: "./archmesh-realtime.d.ts",
    default: "./archmesh-realtime.js",
  });
  for (const field of ["dependencies", "peerDependencies", "optionalDependencies", "bundleDependencies"]) {
    assert.equal(manifest[field], undefined, field);
  }
  // Installing it added nothing but itself.
  assert.deepEqual(readdirSync(path.join(pkg.project, "node_modules")).sort(), [
    ".package-lock.json",
    "@archmesh",
  ]);
});

test("the package exports what its declarations declare", () => {
  assert.deepEqual(Object.keys(pkg.module).sort(), EXPORTS);
  assert.equal(pkg.module.default, pkg.module.ArchMeshRealtime);
  assert.deepEqual(pkg.module.State, {
    CONNECTING: "connecting",
    CONNECTED: "connected",
    RECONNECTING: "reconnecting",
    CLOSED: "closed",
  });
});

test("a gateway serves the packed file byte for byte", async () => {
  const response = await fetch(`${gateway.http}/static/archmesh-realtime.js`);
  assert.equal(response.status, 200);
  // A JavaScript MIME type, or a browser refuses it as a module script.
  assert.match(response.headers.get("content-type"), /^(text|application)\/javascript\b/);
  const served = Buffer.from(await response.arrayBuffer());
  const packed = readFileSync(path.join(pkg.installed, "archmesh-realtime.js"));
  assert.ok(served.length > 1000, `${served.length} bytes served`);
  assert.ok(served.equals(packed), "served and packed archmesh-realtime.js differ");
  assert.ok(served.equals(readFileSync(SOURCE)), "served file is not the source");
});

function tsc(project, config) {
  const run = spawnSync(process.execPath, [TSC, "-p", config, "--pretty", "false"], {
    cwd: project,
    encoding: "utf8",
  });
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

function tsconfig(project, name, { lib, types, files }) {
  const compilerOptions = {
    strict: true,
    noEmit: true,
    exactOptionalPropertyTypes: true,
    module: "nodenext",
    moduleResolution: "nodenext",
    target: "es2022",
    lib,
    types,
  };
  writeFileSync(path.join(project, name), JSON.stringify({ compilerOptions, files }, null, 2));
  return name;
}

/** codes.ts: the error codes the declarations list must be those the gateway (Python's
 * ErrorCode) and the client source give, no more and no fewer. */
function writeCodeCheck(project) {
  const python = path.join(ROOT, ".venv", "bin", "python");
  const script = "import json; from gateway.protocol import ErrorCode; print(json.dumps([c.value for c in ErrorCode]))";
  const gatewayCodes = JSON.parse(execFileSync(python, ["-c", script], { cwd: ROOT, encoding: "utf8" }));
  const source = readFileSync(SOURCE, "utf8");
  const clientCodes = new Set([...source.matchAll(/RealtimeError\(\s*"([a-z_]+)"/g)].map((m) => m[1]));
  for (const m of source.matchAll(/frame\.code \?\? "([a-z_]+)"/g)) clientCodes.add(m[1]);
  assert.ok(gatewayCodes.includes("forbidden") && clientCodes.has("timeout"), "codes found");
  const record = (codes) => `{ ${[...codes].map((c) => `${JSON.stringify(c)}: true`).join(", ")} }`;
  writeFileSync(
    path.join(project, "codes.ts"),
    [
      'import type { ClientErrorCode, GatewayErrorCode } from "@archmesh/realtime";',
      `export const gateway: Record<GatewayErrorCode, true> = ${record(gatewayCodes)};`,
      `export const client: Record<ClientErrorCode, true> = ${record(clientCodes)};`,
      "",
    ].join("\n"),
  );
}

test("the declarations type-check strict consumers in a browser and in Node", () => {
  const project = pkg.project;
  for (const file of readdirSync(path.join(TESTS, "types"))) {
    copyFileSync(path.join(TESTS, "types", file), path.join(project, file));
  }
  // @types/node and @types/ws (tests/js's devDependencies) for the Node consumer.
  symlinkSync(path.join(TESTS, "node_modules", "@types"), path.join(project, "node_modules", "@types"));
  writeCodeCheck(project);
  const browser = tsconfig(project, "tsconfig.browser.json", {
    lib: ["es2022", "dom"],
    types: [],
    files: ["api.ts", "inbox.ts", "codes.ts", "browser.ts"],
  });
  const node = tsconfig(project, "tsconfig.node.json", {
    lib: ["es2022"],
    types: ["node"],
    files: ["api.ts", "inbox.ts", "codes.ts", "node.ts"],
  });
  for (const config of [browser, node]) {
    const { status, output } = tsc(project, config);
    assert.equal(status, 0, `${config}:\n${output}`);
  }

  // The check can fail: a consumer misusing the API is refused, naming the mistakes.
  writeFileSync(
    path.join(project, "wrong.ts"),
    [
      'import { ArchMeshRealtime, State } from "@archmesh/realtime";',
      'export const state: State = "open";',
      'export const client = new ArchMeshRealtime("ws://x/ws", { token: 42 });',
      'client.on("publication", (p) => p.offset.toFixed());',
      "",
    ].join("\n"),
  );
  const wrong = tsconfig(project, "tsconfig.wrong.json", { lib: ["es2022", "dom"], types: [], files: ["wrong.ts"] });
  const { status, output } = tsc(project, wrong);
  assert.notEqual(status, 0);
  assert.match(output, /wrong\.ts\(2,\d+\): error TS2322/, output);
  assert.match(output, /wrong\.ts\(3,\d+\): error TS2322/, output);
  assert.match(output, /wrong\.ts\(4,\d+\): error TS18047/, output);
});
