/**
 * Training data as one array of token ids:
 *   - a token-id file: `.bin` / `.u16` (uint16 little-endian, the corpus package's train.bin), `.u32` (uint32
 *     little-endian) or `.json` (an array of integers);
 *   - a UTF-8 text file with a tokenizer folder (tokenizer.json + tokenizer_config.json, or a tokenizer.json
 *     alone): paragraphs (split at blank lines) are encoded as <bos> text <eos> (when the tokenizer has them),
 *     back to back, as the corpus package lays out its splits.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InvalidArgumentError } from "@moela/core";
import { Tokenizer } from "@moela/tokenizer";

export function readTokenIds(file: string): Int32Array {
  const ext = path.extname(file).toLowerCase();
  const buf = fs.readFileSync(file);
  if (ext === ".json") {
    const v = JSON.parse(buf.toString("utf8")) as unknown;
    if (!Array.isArray(v) || v.some((x) => !Number.isInteger(x) || (x as number) < 0))
      throw new InvalidArgumentError(`${file}: expected a JSON array of token ids`);
    return Int32Array.from(v as number[]);
  }
  if (ext === ".bin" || ext === ".u16") {
    if (buf.length % 2 !== 0) throw new InvalidArgumentError(`${file}: uint16 token file has an odd number of bytes`);
    const out = new Int32Array(buf.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = buf.readUInt16LE(2 * i);
    return out;
  }
  if (ext === ".u32") {
    if (buf.length % 4 !== 0) throw new InvalidArgumentError(`${file}: uint32 token file length is not a multiple of 4`);
    const out = new Int32Array(buf.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = buf.readUInt32LE(4 * i);
    return out;
  }
  throw new InvalidArgumentError(`${file}: token-id files end in .bin/.u16 (uint16), .u32 (uint32) or .json; give a text file with --tokenizer`);
}

/** The folder holding tokenizer.json (and tokenizer_config.json), from a folder or a tokenizer.json path. */
export function tokenizerDir(p: string): string {
  return fs.statSync(p).isDirectory() ? p : path.dirname(p);
}

/** tokenizer_config.json for a tokenizer.json that came without one: no BOS or EOS added, nothing else assumed. */
export const MINIMAL_TOKENIZER_CONFIG = { add_bos_token: false, add_eos_token: false, tokenizer_class: "PreTrainedTokenizerFast" };

/** The tokenizer of a folder (or a tokenizer.json path); without tokenizer_config.json, MINIMAL_TOKENIZER_CONFIG. */
export function loadTokenizer(p: string): Tokenizer {
  const dir = tokenizerDir(p);
  if (fs.existsSync(path.join(dir, "tokenizer_config.json"))) return Tokenizer.fromDir(dir);
  const file = path.join(dir, "tokenizer.json");
  return Tokenizer.fromObjects(JSON.parse(fs.readFileSync(file, "utf8")) as unknown, MINIMAL_TOKENIZER_CONFIG, {
    tokenizerJson: file,
    tokenizerConfig: "(none: no BOS/EOS added)",
  });
}

export function encodeTextFile(file: string, tok: Tokenizer): Int32Array {
  const text = fs.readFileSync(file, "utf8");
  const ids: number[] = [];
  for (const para of text.split(/\n\s*\n/)) {
    const t = para.trim();
    if (t.length === 0) continue;
    if (tok.bosTokenId !== undefined) ids.push(tok.bosTokenId);
    for (const id of tok.encode(t, { addSpecialTokens: false })) ids.push(id);
    if (tok.eosTokenId !== undefined) ids.push(tok.eosTokenId);
  }
  return Int32Array.from(ids);
}
