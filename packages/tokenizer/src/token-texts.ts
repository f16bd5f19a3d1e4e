/**
 * Every token id's text, as constrained decoding needs it (the engine's TokenTexts): an added token's content
 * (listed in specialIds: the grammar matches it whole, so a literal naming it is that one token),
 * else the token decoded alone (a byte-level piece of a UTF-8 sequence decodes to U+FFFD, which the engine never
 * allows); null for ids the vocabulary lacks. Once per model, on the first constrained request.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { TOKENIZER_JSON, Tokenizer } from "./tokenizer.js";

export function tokenTexts(tokenizer: Tokenizer): { texts: (string | null)[]; specialIds: Set<number> } {
  const texts: (string | null)[] = [];
  const specialIds = new Set<number>();
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    if (tokenizer.idToToken(id) === undefined) {
      texts.push(null);
      continue;
    }
    if (tokenizer.isAddedId(id)) specialIds.add(id);
    texts.push(tokenizer.decode([id], { cleanUpTokenizationSpaces: false }));
  }
  return { texts, specialIds };
}

/**
 * EngineOptions.tokenTexts for a checkpoint folder, to spread into the options: reads its tokenizer on first
 * call (the first constrained request), not at startup. {} when the folder has no tokenizer.json (the engine
 * then refuses constrained requests).
 */
export function tokenTextsOption(dir: string): { tokenTexts?: () => { texts: (string | null)[]; specialIds: Set<number> } } {
  if (!existsSync(join(dir, TOKENIZER_JSON))) return {};
  return { tokenTexts: () => tokenTexts(Tokenizer.fromDir(dir)) };
}
