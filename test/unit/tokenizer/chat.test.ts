import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CheckpointError, InvalidArgumentError } from "@moela/core";
import { Tokenizer, type ChatMessage } from "@moela/tokenizer";
import { ASSISTANT, BOS, EOS, USER, tokenizersForFile, writeTinyDir } from "./fixtures.js";

const { tmp, real, tiny } = tokenizersForFile();

const conversation: ChatMessage[] = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "What is 2+2?" },
  { role: "assistant", content: "4." },
  { role: "user", content: "And 3+3?" },
];

// What DeepSeek-V3's template writes, read off the template: system text right after BOS (several system messages
// joined by a blank line), "<｜User｜>" + text per user turn, "<｜Assistant｜>" + text + EOS per assistant turn, and
// a trailing "<｜Assistant｜>" as the generation prompt. The tiny template is a simplified copy, so the same holds.
const expectedWithPrompt = `${BOS}You are a helpful assistant.${USER}What is 2+2?${ASSISTANT}4.${EOS}${USER}And 3+3?${ASSISTANT}`;

describe.each([
  ["DeepSeek-V3", () => real],
  ["tiny", () => tiny],
])("%s chat template", (_name, get) => {
  it("renders system + user + assistant + user with the generation prompt", () => {
    expect(get().applyChatTemplate(conversation)).toBe(expectedWithPrompt);
  });

  it("leaves the generation prompt out when asked", () => {
    expect(get().applyChatTemplate(conversation, { addGenerationPrompt: false })).toBe(expectedWithPrompt.slice(0, -ASSISTANT.length));
  });

  it("joins several system messages with a blank line, ahead of the turns", () => {
    const rendered = get().applyChatTemplate([
      { role: "system", content: "A." },
      { role: "user", content: "hi" },
      { role: "system", content: "B." },
    ]);
    expect(rendered).toBe(`${BOS}A.\n\nB.${USER}hi${ASSISTANT}`);
  });

  it("renders a conversation without a system message", () => {
    expect(get().applyChatTemplate([{ role: "user", content: "héllo 🦊" }])).toBe(`${BOS}${USER}héllo 🦊${ASSISTANT}`);
  });

  it("encodeChat gives one BOS, where encoding the rendered text naively would give two", () => {
    const t = get();
    const ids = t.encodeChat(conversation);
    expect(ids[0]).toBe(t.bosTokenId);
    expect(ids.filter((id) => id === t.bosTokenId)).toHaveLength(1);
    expect(t.decode(ids)).toBe(expectedWithPrompt);
    // The user and assistant markers are single tokens, not spelled out in bytes.
    expect(ids.filter((id) => id === t.tokenToId(USER))).toHaveLength(2);
    expect(ids.at(-1)).toBe(t.tokenToId(ASSISTANT));
    const naive = t.encode(t.applyChatTemplate(conversation));
    expect(naive.slice(0, 2)).toEqual([t.bosTokenId, t.bosTokenId]);
    expect(naive.slice(1)).toEqual(ids);
  });
});

describe("chat template errors and sources", () => {
  it("rejects a message without a string role", () => {
    expect(() => tiny.applyChatTemplate([{ role: 3 as unknown as string, content: "x" }])).toThrow(InvalidArgumentError);
  });

  it("says there is no chat template when tokenizer_config has none", () => {
    const dir = writeTinyDir(tmp, "no-template", ({ tokenizerConfig }) => delete tokenizerConfig.chat_template);
    const t = Tokenizer.fromDir(dir);
    expect(t.chatTemplate).toBeUndefined();
    expect(() => t.applyChatTemplate(conversation)).toThrow(/has no chat_template/);
  });

  it("reads chat_template.jinja when tokenizer_config has no template", () => {
    const dir = writeTinyDir(tmp, "jinja-file", ({ tokenizerConfig }) => delete tokenizerConfig.chat_template);
    writeFileSync(join(dir, "chat_template.jinja"), "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}");
    expect(Tokenizer.fromDir(dir).applyChatTemplate(conversation.slice(0, 2))).toBe("[system:You are a helpful assistant.][user:What is 2+2?]");
  });

  it("picks the default entry of a list of named templates", () => {
    const dir = writeTinyDir(tmp, "named", ({ tokenizerConfig }) => {
      tokenizerConfig.chat_template = [
        { name: "tool_use", template: "TOOLS" },
        { name: "default", template: "{{ bos_token }}{{ messages[0].content }}" },
      ];
    });
    expect(Tokenizer.fromDir(dir).applyChatTemplate([{ role: "user", content: "q" }])).toBe(`${BOS}q`);
  });

  it("turns raise_exception in a template into an InvalidArgumentError", () => {
    const dir = writeTinyDir(tmp, "raises", ({ tokenizerConfig }) => {
      tokenizerConfig.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok";
    });
    const t = Tokenizer.fromDir(dir);
    expect(t.applyChatTemplate([{ role: "user", content: "q" }])).toBe("ok");
    expect(() => t.applyChatTemplate([{ role: "assistant", content: "a" }])).toThrow(/first message must be from the user/);
    expect(() => t.applyChatTemplate([{ role: "assistant", content: "a" }])).toThrow(InvalidArgumentError);
  });

  it("names tokenizer_config.json when the template does not parse", () => {
    const dir = writeTinyDir(tmp, "bad-template", ({ tokenizerConfig }) => {
      tokenizerConfig.chat_template = "{% for m in messages %}{{ m.content }";
    });
    const t = Tokenizer.fromDir(dir);
    expect(() => t.applyChatTemplate(conversation)).toThrow(CheckpointError);
    expect(() => t.applyChatTemplate(conversation)).toThrow(/tokenizer_config\.json: chat_template does not parse/);
  });
});
