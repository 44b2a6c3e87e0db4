// The @archmesh/realtime package as a team gets it: `npm pack` of clients/js into a temporary
// directory, the tarball installed (offline: it has no dependencies) into a throwaway project,
// and imported there by its package name, so that its `exports`, `files` and `types` are
// what is tested rather than the source file.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { ROOT } from "./gateway.mjs";

export const PACKAGE_DIR = path.join(ROOT, "clients", "js");
export const NAME = "@archmesh/realtime";

function npm(args, cwd) {
  // stderr kept apart: npm's notices and warnings are not part of the JSON on stdout.
  return execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], {
    cwd,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/**
 * Pack and install the package; `remove()` deletes everything made. `module` is the package
 * imported by name from inside the consumer project (a re-exporting module placed there, as
 * a bare specifier resolves from the importing file's location).
 */
export async function installPackage() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "archmesh-realtime-pkg-"));
  const [packed] = JSON.parse(npm(["pack", "--json", "--pack-destination", dir], PACKAGE_DIR));
  const tarball = path.join(dir, packed.filename);
  const project = path.join(dir, "consumer");
  mkdirSync(project);
  writeFileSync(
    path.join(project, "package.json"),
    JSON.stringify({ name: "consumer", private: true, type: "module" }),
  );
  npm(["install", "--offline", "--no-package-lock", tarball], project);
  const entry = path.join(project, "entry.mjs");
  writeFileSync(entry, `export * from "${NAME}";\nexport { default } from "${NAME}";\n`);
  const module = await import(pathToFileURL(entry).href);
  return {
    dir,
    packed,
    tarball,
    project,
    installed: path.join(project, "node_modules", ...NAME.split("/")),
    module,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
