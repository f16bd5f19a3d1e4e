/** Where things are in the repository: the root, the `moela` executable, the bundled models. */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (services/cli/src -> ../../..). */
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
/** The `moela` executable the children run. */
export const MOELA_BIN = join(REPO_ROOT, "services/cli/bin/moela.js");
/** The bundled model `npm start` serves: trained by `moela train` on the Brown corpus (its README is the model card). */
export const DEFAULT_MODEL = join(REPO_ROOT, "models/moela-v3-deep");
/** The random-weight miniature the tests run (scripts/gen-tiny-model.ts writes it; committed at models/tiny-v3). */
export const TINY_MODEL = join(REPO_ROOT, "models/tiny-v3");
