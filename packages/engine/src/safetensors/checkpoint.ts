/**
 * The tensors of a checkpoint folder, whichever way they are laid out on disk:
 *  1. model.safetensors (one file; preferred when present, as transformers does);
 *  2. model.safetensors.index.json + the shards its weight_map names (a weight and its
 *     `_scale_inv` may live in different shards);
 *  3. neither, but some *.safetensors files: all of them are read, in name order. We accept this
 *     (hand-made or partially downloaded folders look like it) because the duplicate check below
 *     still refuses two files that define the same tensor.
 *
 * open() reads and validates every header (cheap) so a malformed folder fails at once; tensor bytes
 * are read on first use, a whole shard at a time, and kept.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError, errorMessage } from "@moela/core";
import { readSafetensorsHeader, readSafetensorsFile, readTensorsFrom, type SafetensorsHeader, type TensorEntry, type TensorInfo } from "./reader.js";
import { SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE } from "./writer.js";

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Shard names come from a JSON file: refuse anything that would resolve outside the folder. */
function isSafeRelativeName(name: string): boolean {
  if (name.length === 0 || path.isAbsolute(name) || name.includes("\0")) return false;
  return !name.split(/[\\/]/).some((seg) => seg === "..");
}

export class CheckpointTensors {
  readonly dir: string;
  /** Safetensors files of the checkpoint, relative to dir, in the order they were read. */
  readonly files: string[];
  /** Path of the index file, or null for a single file / index-less folder. */
  readonly indexFile: string | null;
  private readonly entries: Map<string, TensorEntry>;
  private readonly headers: Map<string, SafetensorsHeader>;
  private readonly loaded = new Map<string, Map<string, TensorInfo>>();

  private constructor(dir: string, files: string[], indexFile: string | null, headers: Map<string, SafetensorsHeader>, entries: Map<string, TensorEntry>) {
    this.dir = dir;
    this.files = files;
    this.indexFile = indexFile;
    this.headers = headers;
    this.entries = entries;
  }

  static open(dir: string): CheckpointTensors {
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch {
      throw new CheckpointError(dir, "checkpoint folder does not exist");
    }
    if (!st.isDirectory()) throw new CheckpointError(dir, "checkpoint path is not a folder");

    const single = path.join(dir, SAFETENSORS_SINGLE_FILE);
    const indexPath = path.join(dir, SAFETENSORS_INDEX_FILE);
    if (fs.existsSync(single)) return CheckpointTensors.fromFiles(dir, [SAFETENSORS_SINGLE_FILE], null, null);
    if (fs.existsSync(indexPath)) {
      const weightMap = readIndex(indexPath);
      const files = [...new Set(weightMap.values())].sort();
      for (const f of files) {
        if (!fs.existsSync(path.join(dir, f))) {
          const example = [...weightMap].find(([, file]) => file === f)![0];
          throw new CheckpointError(path.join(dir, f), `shard named in ${SAFETENSORS_INDEX_FILE} is missing (it should hold e.g. '${example}')`);
        }
      }
      return CheckpointTensors.fromFiles(dir, files, indexPath, weightMap);
    }
    let names: string[];
    try {
      names = fs
        .readdirSync(dir)
        .filter((f) => f.endsWith(".safetensors"))
        .sort();
    } catch (e) {
      throw new CheckpointError(dir, `cannot list the folder: ${errorMessage(e)}`);
    }
    if (names.length === 0) {
      throw new CheckpointError(dir, `no ${SAFETENSORS_SINGLE_FILE}, ${SAFETENSORS_INDEX_FILE} or other *.safetensors file in the checkpoint folder`);
    }
    return CheckpointTensors.fromFiles(dir, names, null, null);
  }

  private static fromFiles(dir: string, files: string[], indexPath: string | null, weightMap: Map<string, string> | null): CheckpointTensors {
    const headers = new Map<string, SafetensorsHeader>();
    const entries = new Map<string, TensorEntry>();
    const owner = new Map<string, string>();
    for (const f of files) {
      const full = path.join(dir, f);
      const header = readSafetensorsHeader(full);
      headers.set(f, header);
      for (const [name, entry] of header.tensors) {
        const other = owner.get(name);
        if (other !== undefined) throw new CheckpointError(full, `duplicate tensor: also defined in ${path.join(dir, other)}`, name);
        owner.set(name, f);
        entries.set(name, entry);
      }
    }
    if (weightMap) {
      for (const [name, f] of weightMap) {
        if (owner.get(name) !== f) {
          const where = owner.has(name) ? ` (it is in ${owner.get(name)})` : "";
          throw new CheckpointError(
            path.join(dir, f),
            `${SAFETENSORS_INDEX_FILE} maps this tensor to this shard but the shard does not contain it${where}`,
            name,
          );
        }
      }
      // Tensors a shard holds beyond the index are kept: transformers loads whole shards too.
    }
    return new CheckpointTensors(dir, files, indexPath, headers, entries);
  }

  /** All tensor names, sorted. */
  names(): string[] {
    return [...this.entries.keys()].sort();
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** dtype, shape and file of a tensor without reading its bytes. */
  describe(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw this.missing(name);
    return e;
  }

  /** The tensor with its bytes (reads its file on first use). */
  get(name: string): TensorInfo {
    const e = this.entries.get(name);
    if (!e) throw this.missing(name);
    const rel = path.relative(this.dir, e.file);
    let tensors = this.loaded.get(rel);
    if (!tensors) {
      tensors = readSafetensorsFile(e.file);
      this.loaded.set(rel, tensors);
    }
    const t = tensors.get(name);
    // The file was validated at open(); a tensor gone now means the file changed underneath us.
    if (!t) throw new CheckpointError(e.file, "tensor disappeared from the file after the checkpoint was opened", name);
    return t;
  }

  /** Read a few tensors without loading (and caching) their whole shards. */
  getUncached(names: readonly string[]): Map<string, TensorInfo> {
    const out = new Map<string, TensorInfo>();
    const byFile = new Map<string, string[]>();
    for (const n of names) {
      const e = this.describe(n);
      const rel = path.relative(this.dir, e.file);
      byFile.set(rel, [...(byFile.get(rel) ?? []), n]);
    }
    for (const [rel, ns] of byFile) {
      for (const [n, t] of readTensorsFrom(this.headers.get(rel)!, ns)) out.set(n, t);
    }
    return out;
  }

  /** Drop cached shard bytes (they are re-read on the next get). */
  release(): void {
    this.loaded.clear();
  }

  private missing(name: string): CheckpointError {
    return new CheckpointError(
      this.indexFile ?? this.dir,
      `missing tensor (checkpoint has ${this.entries.size} tensors in ${this.files.length} file(s))`,
      name,
    );
  }
}

function readIndex(indexPath: string): Map<string, string> {
  let text: string;
  try {
    text = fs.readFileSync(indexPath, "utf8");
  } catch (e) {
    throw new CheckpointError(indexPath, `cannot read: ${errorMessage(e)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(indexPath, `not valid JSON: ${errorMessage(e)}`);
  }
  if (!isPlainObject(json)) throw new CheckpointError(indexPath, "index must be a JSON object");
  const wm = json["weight_map"];
  if (!isPlainObject(wm)) throw new CheckpointError(indexPath, "index has no 'weight_map' object");
  const out = new Map<string, string>();
  for (const [name, file] of Object.entries(wm)) {
    if (typeof file !== "string") throw new CheckpointError(indexPath, `weight_map value must be a file name, got ${JSON.stringify(file)}`, name);
    if (!isSafeRelativeName(file)) throw new CheckpointError(indexPath, `weight_map names '${file}', which is not a file inside the checkpoint folder`, name);
    out.set(name, path.normalize(file));
  }
  if (out.size === 0) throw new CheckpointError(indexPath, "weight_map is empty");
  return out;
}
