/**
 * Bounds on what one request may cost the router before a single token is generated (docs/SECURITY.md
 * lists them with their flags). Each has a clear 400 (or 413) naming the field; the router refuses what
 * prefill or decode would refuse, so no request fails late for a reason visible at the door.
 *
 * Constants here are fixed; the router's flags set the rest (body bytes, prompt characters, prompt
 * tokens) through ValidationContext.
 */

/** Most nesting of arrays and objects in a JSON body (checked before parsing, so JSON.parse never recurses deeper). */
export const MAX_JSON_DEPTH = 64;
/** Most characters of one stop string (the matcher holds back up to this much text per request). */
export const MAX_STOP_STRING_CHARS = 512;
/** Most ids in stop_token_ids (decode compares every generated token with each). */
export const MAX_STOP_TOKEN_IDS = 1024;
/** Most messages in one chat request. */
export const MAX_CHAT_MESSAGES = 4096;
/** Most content parts in one chat message. */
export const MAX_CONTENT_PARTS = 1024;
/** Longest cache_salt, in characters. */
export const MAX_CACHE_SALT_CHARS = 256;

/**
 * Prefill's default --max-batch-tokens cap (services/prefill/src/main.ts DEFAULT_MAX_BATCH_TOKENS): the
 * longest prompt a prefill instance takes unless configured otherwise. The router refuses longer prompts
 * at once (400) instead of letting the job fail in prefill; test/unit/router/limits.test.ts checks that the
 * two numbers agree.
 */
export const PREFILL_DEFAULT_MAX_PROMPT_TOKENS = 32_768;

/** Characters per context token the default prompt-character limit allows (see defaultMaxPromptChars). */
export const PROMPT_CHARS_PER_TOKEN = 16;
/** The default prompt-character limit is never below this. */
export const MIN_DEFAULT_MAX_PROMPT_CHARS = 65_536;

/**
 * The default limit on a request's prompt text before tokenizing: 16 characters per token of the context
 * (English averages about 4 per token with byte-level BPE), at least 64 Ki. A text past it almost surely
 * cannot fit the context anyway; tokenizing it would only burn the router's CPU to say so.
 */
export function defaultMaxPromptChars(maxModelLen: number): number {
  return Math.max(MIN_DEFAULT_MAX_PROMPT_CHARS, PROMPT_CHARS_PER_TOKEN * maxModelLen);
}

/** The characters that matter to nesting depth: quotes (strings) and brackets. */
const STRUCTURE = /["[\]{}]/g;

/**
 * Whether the JSON text nests arrays/objects deeper than `max` (brackets inside strings do not count).
 * Linear in the text, no recursion: safe on any input, including text that is not valid JSON (the parser
 * reports that afterwards). It jumps between structural characters with the regex engine and over
 * strings with indexOf, so a body that is mostly one long prompt string costs about a memchr.
 */
export function jsonDepthExceeds(text: string, max: number): boolean {
  let depth = 0;
  STRUCTURE.lastIndex = 0;
  for (let m = STRUCTURE.exec(text); m !== null; m = STRUCTURE.exec(text)) {
    const c = text.charCodeAt(m.index);
    if (c === 0x22) {
      // Skip to the closing quote: the next '"' not escaped by an odd run of backslashes.
      let q = m.index;
      for (;;) {
        q = text.indexOf('"', q + 1);
        if (q < 0) return false; // unterminated string: the parser's error, not ours
        let b = q - 1;
        while (text.charCodeAt(b) === 0x5c) b--;
        if ((q - 1 - b) % 2 === 0) break;
      }
      STRUCTURE.lastIndex = q + 1;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else depth--;
  }
  return false;
}
