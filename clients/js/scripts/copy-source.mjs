// The client's one source is gateway/static/archmesh-realtime.js: every gateway serves that
// file at /static/archmesh-realtime.js and the Python package ships it. This package carries
// a copy of it, made by the `prepare` script: npm runs it for `npm pack` here and for
// `npm install ./clients/js` (a directory, which runs `prepare` but not `prepack`). The copy
// is ignored by git, so there is nothing to keep in step by hand.
import { copyFileSync, renameSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const source = path.resolve(here, "../../../gateway/static/archmesh-realtime.js");
const target = path.resolve(here, "../archmesh-realtime.js");
// Written aside and renamed: a reader never sees a half-written file.
const partial = `${target}.${process.pid}.tmp`;
copyFileSync(source, partial);
renameSync(partial, target);
