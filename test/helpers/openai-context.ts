/** What the OpenAI request validators (@moela/openai-api) need, for the committed tiny-v3 model. */
import type { ValidationContext } from "@moela/openai-api";
import { Tokenizer } from "@moela/tokenizer";

/** The committed tiny-v3 model's tokenizer. */
export const tinyTokenizer = Tokenizer.fromDir(new URL("../../models/tiny-v3", import.meta.url).pathname);

/** tiny-v3 served as "tiny-v3" with a 2048-token context, its tokenizer as the encoder, neutral sampling defaults. */
export const tinyValidationContext: ValidationContext = {
  servedModelName: "tiny-v3",
  maxModelLen: 2048,
  vocabSize: 1024,
  encoder: tinyTokenizer,
  defaults: { temperature: 1, topP: 1, topK: -1 },
};
