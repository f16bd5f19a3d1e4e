/**
 * The tokenizer of a checkpoint folder: tokenizer.json (Hugging Face tokenizers format) for the vocabulary, BPE and
 * byte-level decoding, and tokenizer_config.json (transformers format) for the BOS/EOS policy and the chat template.
 *
 * @huggingface/tokenizers does the BPE; it adds no BOS by itself (DeepSeek-V3's post-processor is ByteLevel, which
 * adds nothing), so the BOS/EOS policy of tokenizer_config.json (add_bos_token/add_eos_token, as LlamaTokenizerFast
 * applies it) is applied here.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { CheckpointError, errorMessage, InvalidArgumentError } from "@moela/core";

export const TOKENIZER_JSON = "tokenizer.json";
export const TOKENIZER_CONFIG_JSON = "tokenizer_config.json";
/** Newer transformers releases store the template in its own file instead of tokenizer_config.json. */
export const CHAT_TEMPLATE_JINJA = "chat_template.jinja";

export interface ChatMessage {
  role: string;
  /** null for an assistant turn that only carries tool_calls (DeepSeek-V3's template tests `content is none`). */
  content: string | null;
  [extra: string]: unknown;
}

export interface EncodeOptions {
  /** Apply tokenizer_config's add_bos_token/add_eos_token. Default true (as transformers' encode()). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop tokens marked special in tokenizer.json's added_tokens. Default false. */
  skipSpecialTokens?: boolean;
  /** transformers' clean_up_tokenization_spaces (" ." -> "."); default from tokenizer_config, false if absent. */
  cleanUpTokenizationSpaces?: boolean;
}

export interface ChatTemplateOptions {
  /** Append the assistant prefix so the model answers next. Default true. */
  addGenerationPrompt?: boolean;
  /** More template variables (tools, documents, ...), passed as they are. */
  templateVariables?: Record<string, unknown>;
}

/** Where the two documents came from, for error messages. */
export interface TokenizerSource {
  tokenizerJson: string;
  tokenizerConfig: string;
}

type JsonObject = Record<string, unknown>;

const SUPPORTED_MODEL_TYPES = ["BPE", "WordPiece", "Unigram"];

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function readJsonFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "file is missing" : `cannot be read (${code ?? String(err)})`;
    throw new CheckpointError(path, why, undefined, { cause: err });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CheckpointError(path, `is not valid JSON: ${errorMessage(err)}`, undefined, { cause: err });
  }
}

/** tokenizer_config.json writes special tokens either as a string or as an AddedToken-like {content: ...}. */
function specialTokenContent(config: JsonObject, field: string, file: string): string | undefined {
  const value = config[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return value;
  if (isObject(value) && typeof value.content === "string") return value.content;
  throw new CheckpointError(file, `${field} must be a string or an object with a string "content"`);
}

/** chat_template is a string, or a list of {name, template} of which "default" is the one to use. */
function chatTemplateText(config: JsonObject, file: string): string | undefined {
  const value = config.chat_template;
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value.find((t) => isObject(t) && t.name === "default");
    if (isObject(named) && typeof named.template === "string") return named.template;
    throw new CheckpointError(file, 'chat_template is a list without a {name: "default", template: string} entry');
  }
  throw new CheckpointError(file, "chat_template must be a string or a list of named templates");
}

export class Tokenizer {
  readonly source: TokenizerSource;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  /** One past the largest id (model vocabulary and added tokens): the smallest embedding table that fits. */
  readonly vocabSize: number;
  readonly modelMaxLength: number | undefined;
  readonly chatTemplate: string | undefined;
  private readonly hf: HfTokenizer;
  private readonly cleanUpTokenizationSpaces: boolean;
  private readonly specialIds: ReadonlySet<number>;
  /** Every id of tokenizer.json's added_tokens (special or not: DeepSeek-V3's tool-call markers are not special). */
  private readonly addedIds: ReadonlySet<number>;
  private compiledTemplate: Template | undefined;

  /** Loads tokenizer.json and tokenizer_config.json (and chat_template.jinja when present) from `dir`. */
  static fromDir(dir: string): Tokenizer {
    const source = { tokenizerJson: join(dir, TOKENIZER_JSON), tokenizerConfig: join(dir, TOKENIZER_CONFIG_JSON) };
    const tokenizerJson = readJsonFile(source.tokenizerJson);
    const tokenizerConfig = readJsonFile(source.tokenizerConfig);
    const jinjaPath = join(dir, CHAT_TEMPLATE_JINJA);
    if (isObject(tokenizerConfig) && tokenizerConfig.chat_template === undefined && existsSync(jinjaPath)) {
      return new Tokenizer(tokenizerJson, { ...tokenizerConfig, chat_template: readFileSync(jinjaPath, "utf8") }, source);
    }
    return new Tokenizer(tokenizerJson, tokenizerConfig, source);
  }

  /** Builds a tokenizer from the parsed documents; `source` only names them in errors. */
  static fromObjects(
    tokenizerJson: unknown,
    tokenizerConfig: unknown,
    source: TokenizerSource = { tokenizerJson: TOKENIZER_JSON, tokenizerConfig: TOKENIZER_CONFIG_JSON },
  ): Tokenizer {
    return new Tokenizer(tokenizerJson, tokenizerConfig, source);
  }

  private constructor(tokenizerJson: unknown, tokenizerConfig: unknown, source: TokenizerSource) {
    this.source = source;
    const tj = source.tokenizerJson;
    const tc = source.tokenizerConfig;
    if (!isObject(tokenizerJson)) throw new CheckpointError(tj, "must be a JSON object");
    if (!isObject(tokenizerJson.model)) throw new CheckpointError(tj, 'has no "model" object');
    const model = tokenizerJson.model;
    if (typeof model.type !== "string" || !SUPPORTED_MODEL_TYPES.includes(model.type)) {
      // The library guesses a model from the fields present when the type is unknown; a wrong guess would give
      // wrong ids silently, so an unknown type is refused here.
      throw new CheckpointError(tj, `model.type must be one of ${SUPPORTED_MODEL_TYPES.join(", ")}`);
    }
    if (!isObject(model.vocab) && !Array.isArray(model.vocab)) throw new CheckpointError(tj, "model.vocab is missing");
    if (model.type === "BPE" && !Array.isArray(model.merges)) throw new CheckpointError(tj, "model.merges must be a list");
    if (!Array.isArray(tokenizerJson.added_tokens)) throw new CheckpointError(tj, "added_tokens must be a list");
    for (const [i, t] of tokenizerJson.added_tokens.entries()) {
      if (!isObject(t) || typeof t.content !== "string" || !Number.isInteger(t.id) || (t.id as number) < 0) {
        throw new CheckpointError(tj, `added_tokens[${i}] needs a string content and a non-negative integer id`);
      }
    }
    if (!isObject(tokenizerConfig)) throw new CheckpointError(tc, "must be a JSON object");

    // The library reads optional fields it does not find as undefined, so the documents go in with the
    // fields it requires filled in.
    const documents = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...tokenizerJson,
    };
    try {
      this.hf = new HfTokenizer(documents, tokenizerConfig);
    } catch (err) {
      throw new CheckpointError(tj, `cannot be loaded: ${errorMessage(err)}`, undefined, { cause: err });
    }

    this.bosToken = specialTokenContent(tokenizerConfig, "bos_token", tc);
    this.eosToken = specialTokenContent(tokenizerConfig, "eos_token", tc);
    this.bosTokenId = this.idOfConfigToken(this.bosToken, "bos_token");
    this.eosTokenId = this.idOfConfigToken(this.eosToken, "eos_token");
    // transformers' LlamaTokenizer(Fast) defaults: add BOS, no EOS.
    this.addBosToken = this.configFlag(tokenizerConfig, "add_bos_token", true);
    this.addEosToken = this.configFlag(tokenizerConfig, "add_eos_token", false);
    if (this.addBosToken && this.bosTokenId === undefined) {
      throw new CheckpointError(tc, "add_bos_token is true but bos_token is not set");
    }
    if (this.addEosToken && this.eosTokenId === undefined) {
      throw new CheckpointError(tc, "add_eos_token is true but eos_token is not set");
    }
    this.cleanUpTokenizationSpaces = this.configFlag(tokenizerConfig, "clean_up_tokenization_spaces", false);
    const maxLen = tokenizerConfig.model_max_length;
    // transformers writes a huge sentinel (1e30) when the length is unknown.
    this.modelMaxLength = typeof maxLen === "number" && maxLen > 0 && maxLen < 1e15 ? maxLen : undefined;
    this.chatTemplate = chatTemplateText(tokenizerConfig, tc);

    let maxId = -1;
    for (const id of this.hf.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    const specialIds = new Set<number>();
    for (const t of tokenizerJson.added_tokens as JsonObject[]) if (t.special === true) specialIds.add(t.id as number);
    this.specialIds = specialIds;
    this.addedIds = new Set((tokenizerJson.added_tokens as JsonObject[]).map((t) => t.id as number));
  }

  private configFlag(config: JsonObject, field: string, fallback: boolean): boolean {
    const value = config[field];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== "boolean") throw new CheckpointError(this.source.tokenizerConfig, `${field} must be a boolean`);
    return value;
  }

  private idOfConfigToken(content: string | undefined, field: string): number | undefined {
    if (content === undefined) return undefined;
    const id = this.hf.token_to_id(content);
    if (id === undefined) {
      throw new CheckpointError(this.source.tokenizerConfig, `${field} ${JSON.stringify(content)} is not in the vocabulary of ${this.source.tokenizerJson}`);
    }
    return id;
  }

  /** Text to ids; with addSpecialTokens (default) BOS/EOS are added as tokenizer_config says. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== "string") throw new InvalidArgumentError("encode: text must be a string");
    const ids = text.length === 0 ? [] : this.hf.encode(text, { add_special_tokens: false }).ids;
    if (options.addSpecialTokens ?? true) {
      if (this.addBosToken && this.bosTokenId !== undefined) ids.unshift(this.bosTokenId);
      if (this.addEosToken && this.eosTokenId !== undefined) ids.push(this.eosTokenId);
    }
    return ids;
  }

  /** Ids to text. An id outside [0, vocabSize) or without a token is an InvalidArgumentError. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.hf.id_to_token(id) === undefined) {
        throw new InvalidArgumentError(`decode: token id ${id} is not in the vocabulary (size ${this.vocabSize})`);
      }
    }
    const skip = options.skipSpecialTokens ?? false;
    const kept = skip ? ids.filter((id) => !this.specialIds.has(id)) : ids;
    // The library refuses an empty list.
    if (kept.length === 0) return "";
    return this.hf.decode([...kept], {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: options.cleanUpTokenizationSpaces ?? this.cleanUpTokenizationSpaces,
    });
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** Whether tokenizer.json marks the id as a special added token (skipped by skipSpecialTokens). */
  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Whether the id is one of tokenizer.json's added tokens (matched whole by the pre-tokenizer, special or not). */
  isAddedId(id: number): boolean {
    return this.addedIds.has(id);
  }

  /** Renders tokenizer_config's chat_template with bos_token, eos_token, add_generation_prompt and messages. */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (this.chatTemplate === undefined) {
      throw new InvalidArgumentError(`${this.source.tokenizerConfig} has no chat_template; send a plain prompt`);
    }
    if (!Array.isArray(messages)) throw new InvalidArgumentError("messages must be a list");
    for (const [i, m] of messages.entries()) {
      if (!isObject(m) || typeof m.role !== "string" || (typeof m.content !== "string" && m.content !== null)) {
        throw new InvalidArgumentError(`messages[${i}] needs a string role and a string (or null) content`);
      }
    }
    if (this.compiledTemplate === undefined) {
      try {
        this.compiledTemplate = new Template(this.chatTemplate);
      } catch (err) {
        throw new CheckpointError(this.source.tokenizerConfig, `chat_template does not parse: ${errorMessage(err)}`);
      }
    }
    try {
      return this.compiledTemplate.render({
        ...options.templateVariables,
        messages,
        bos_token: this.bosToken ?? "",
        eos_token: this.eosToken ?? "",
        add_generation_prompt: options.addGenerationPrompt ?? true,
      });
    } catch (err) {
      // Templates reject bad conversations with raise_exception (e.g. roles that do not alternate).
      throw new InvalidArgumentError(`chat template: ${errorMessage(err)}`, { cause: err });
    }
  }

  /**
   * Renders the chat template and tokenizes the result without adding special tokens, as transformers'
   * apply_chat_template(tokenize=True) and vLLM's chat path do: the template writes the BOS itself
   * (DeepSeek-V3's starts with {{bos_token}}), so adding one here would double it.
   */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, options), { addSpecialTokens: false });
  }
}
