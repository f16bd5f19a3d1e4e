/**
 * A small, deterministic byte-level BPE tokenizer in the real Hugging Face tokenizer.json format, shaped like
 * DeepSeek-V3's (same Split+ByteLevel pre-tokenizer, ByteLevel decoder, LlamaTokenizerFast config, a DeepSeek-style
 * chat template), for the bundled tiny model and the tests. 1024 ids in all:
 *   0..4     special added tokens (bos, eos, User, Assistant, pad)
 *   5..260   the 256 byte-level symbols, in byte order (id = 5 + byte)
 *   261..    one token per BPE merge, learned by a greedy trainer over the corpus below
 * Nothing here is random: the same code always yields byte-identical files.
 */
import { byteLevelBpeModel, createDeepseekV3PreTokenizer, DEEPSEEK_V3_DECODER, DEEPSEEK_V3_POST_PROCESSOR, DEEPSEEK_V3_PRE_TOKENIZER } from "./hf-json.js";

export const TINY_VOCAB_SIZE = 1024;

export const TINY_SPECIAL_TOKENS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜pad｜>"] as const;

/**
 * DeepSeek-V3's chat template, simplified: no tool calls. System messages are joined (blank line between) and put
 * right after bos; each user turn is <｜User｜>text, each assistant turn <｜Assistant｜>text<eos>; the generation
 * prompt is a trailing <｜Assistant｜>.
 */
export const TINY_CHAT_TEMPLATE =
  "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}" +
  "{% set ns = namespace(system_prompt='', is_first_sp=true) %}" +
  "{%- for message in messages %}{%- if message['role'] == 'system' %}" +
  "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}" +
  "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}" +
  "{%- endif %}{%- endfor %}" +
  "{{ bos_token }}{{ ns.system_prompt }}" +
  "{%- for message in messages %}" +
  "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}" +
  "{%- elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}" +
  "{%- endif %}{%- endfor %}" +
  "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}";

/** Training text: plain ASCII English (so the Unicode tables of the running Node cannot change the result). */
const CORPUS = `The quick brown fox jumps over the lazy dog. A model reads a prompt, one token at a time, and writes the next token.
When the model is small, the text it writes is not very good, but the numbers it computes are still exact, and that is what the tests check.

Once upon a time there was a little town by the sea. Every morning the people of the town went down to the water to see the boats come in.
The children ran along the sand, the dogs barked at the birds, and the old men sat on the wall and talked about the weather.
"It will rain today," said one. "It will not," said the other, and they laughed, because they said the same thing every day.

In a computer, a number is stored in bits. A float has a sign, an exponent and a mantissa; a brain float keeps the exponent of a float
but only seven bits of the mantissa, so it is fast to compute with and still covers a wide range of values. The key and the value of
each token are kept in a cache, so that the model does not have to compute them again for the next token.

Hello, world! How are you today? I am fine, thank you. What is your name? My name is Moela, and I serve language models.
Please write a short story about a cat who wants to learn to fly. The cat climbed the tallest tree in the garden and looked at the sky.
"If the birds can do it, so can I," the cat thought. It jumped, and it fell into the soft grass, and it was happy anyway.

Servers send tokens back to the user as soon as they are ready. The router takes a request, the prefill worker reads the prompt,
and the decode worker writes one token after another until it reaches the end of the sentence or the maximum number of tokens.
If a worker fails, the request is sent to another one and the user should never notice the difference.

Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 24 42 64 100 128 256 512 1024 2048 4096 2025 3.14 1,000 99%.
Lists of things: apples, oranges, bananas, and pears; red, green, blue and yellow; Monday, Tuesday, Wednesday, Thursday, Friday.
Questions and answers: Why is the sky blue? Because the air scatters blue light more than red light. Where do rivers go? To the sea.

A library is a quiet place full of shelves, catalogues and reading tables. Librarians recommend biographies, encyclopedias,
dictionaries, atlases and novels; students borrow textbooks on mathematics, chemistry, geography, philosophy and astronomy.
Somewhere between the architecture section and the photography collection, a forgotten manuscript describes extraordinary
journeys across mountains, glaciers, deserts, volcanoes and archipelagos, written by an enthusiastic but disorganized explorer.

Cooking is chemistry you can eat. Knead the dough, let it rise overnight, then bake it until the crust is golden and crunchy.
Chop the onions, garlic, carrots and celery; simmer them slowly with tomatoes, lentils, pepper, cumin and a pinch of salt.
Strawberries, raspberries and blueberries make a wonderful dessert with yoghurt, honey and crushed walnuts or hazelnuts.
`;

/** GPT-2's byte-to-symbol table (bytes_to_unicode): printable Latin-1 bytes map to themselves, others to 256+. */
export function byteLevelAlphabet(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const symbols = new Array<string>(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    symbols[b] = printable.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + next++);
  }
  return symbols;
}

interface TrainedBpe {
  vocab: Record<string, number>;
  merges: string[];
}

/**
 * Greedy BPE: repeatedly merge the most frequent adjacent pair (ties broken by the smaller "left right" string)
 * until the vocabulary holds `vocabSize` ids. Words are the pre-tokenizer's output, counted.
 */
function trainBpe(corpus: string, vocabSize: number): TrainedBpe {
  const vocab: Record<string, number> = {};
  let nextId = 0;
  for (const special of TINY_SPECIAL_TOKENS) vocab[special] = nextId++;
  for (const symbol of byteLevelAlphabet()) vocab[symbol] = nextId++;

  // Pre-tokenize with the library's own implementation of the pre-tokenizer, so the words the trainer merges are
  // exactly the pieces the runtime will run BPE on.
  const wordCounts = new Map<string, number>();
  for (const piece of createDeepseekV3PreTokenizer()(corpus)) wordCounts.set(piece, (wordCounts.get(piece) ?? 0) + 1);
  const words = [...wordCounts.keys()].sort().map((w) => ({ symbols: [...w], count: wordCounts.get(w) ?? 0 }));

  const merges: string[] = [];
  while (nextId < vocabSize) {
    const pairCounts = new Map<string, number>();
    for (const word of words) {
      for (let i = 0; i + 1 < word.symbols.length; i++) {
        const key = `${word.symbols[i]} ${word.symbols[i + 1]}`;
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + word.count);
      }
    }
    let best: string | undefined;
    let bestCount = 0;
    for (const [key, count] of pairCounts) {
      if (count > bestCount || (count === bestCount && best !== undefined && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === undefined) {
      throw new Error(`tiny tokenizer corpus ran out of pairs at ${nextId} ids (wanted ${vocabSize})`);
    }
    const [left, right] = best.split(" ") as [string, string];
    const merged = left + right;
    merges.push(best);
    // Two merge paths can spell the same string ("ab"+"c", "a"+"bc"); the token gets one id, both merges stay.
    if (!(merged in vocab)) vocab[merged] = nextId++;
    for (const word of words) {
      const out: string[] = [];
      for (let i = 0; i < word.symbols.length; i++) {
        if (i + 1 < word.symbols.length && word.symbols[i] === left && word.symbols[i + 1] === right) {
          out.push(merged);
          i++;
        } else {
          out.push(word.symbols[i] as string);
        }
      }
      word.symbols = out;
    }
  }
  return { vocab, merges };
}

export interface TinyTokenizerFiles {
  /** Contents of tokenizer.json (Hugging Face tokenizers format). */
  tokenizerJson: Record<string, unknown>;
  /** Contents of tokenizer_config.json (transformers format). */
  tokenizerConfig: Record<string, unknown>;
  /** Number of ids, specials included: 1024. */
  vocabSize: number;
}

function addedTokenEntry(content: string): Record<string, unknown> {
  return { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
}

/** Builds the tiny tokenizer's two files. `modelMaxLength` defaults to 4096. */
export function buildTinyTokenizerFiles(options: { modelMaxLength?: number } = {}): TinyTokenizerFiles {
  const { vocab, merges } = trainBpe(CORPUS, TINY_VOCAB_SIZE);
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: TINY_SPECIAL_TOKENS.map((content, id) => ({ id, ...addedTokenEntry(content) })),
    normalizer: null,
    pre_tokenizer: DEEPSEEK_V3_PRE_TOKENIZER,
    post_processor: DEEPSEEK_V3_POST_PROCESSOR,
    decoder: DEEPSEEK_V3_DECODER,
    model: byteLevelBpeModel(vocab, merges),
  };
  const asAddedToken = (content: string) => ({
    __type: "AddedToken",
    content,
    lstrip: false,
    normalized: true,
    rstrip: false,
    single_word: false,
  });
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: Object.fromEntries(TINY_SPECIAL_TOKENS.map((c, id) => [String(id), addedTokenEntry(c)])),
    bos_token: asAddedToken(TINY_SPECIAL_TOKENS[0]),
    eos_token: asAddedToken(TINY_SPECIAL_TOKENS[1]),
    pad_token: asAddedToken(TINY_SPECIAL_TOKENS[4]),
    unk_token: null,
    clean_up_tokenization_spaces: false,
    legacy: true,
    model_max_length: options.modelMaxLength ?? 4096,
    sp_model_kwargs: {},
    tokenizer_class: "LlamaTokenizerFast",
    chat_template: TINY_CHAT_TEMPLATE,
  };
  return { tokenizerJson, tokenizerConfig, vocabSize: TINY_VOCAB_SIZE };
}
