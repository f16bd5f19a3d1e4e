/**
 * The one error contract: every gRPC error code has its class in @moela/core, a class carries its
 * code, and errorForCode turns a code back into that class (a non-error code into UNKNOWN).
 */
import {
  CancelledError,
  CheckpointError,
  Code,
  ConfigError,
  ERROR_CLASS_BY_CODE,
  FailedPreconditionError,
  FailureReason,
  InvalidArgumentError,
  MoelaError,
  UnavailableError,
  UnknownError,
  codeName,
  errorForCode,
  errorMessage,
  isErrorCode,
  isFailureReason,
  type MoelaErrorClass,
} from "@moela/core";
import * as core from "@moela/core";
import { describe, expect, it } from "vitest";

// Each class reached through the module: the table is the one list of them, with no import list beside it.
const CLASSES: readonly [keyof typeof Code, MoelaErrorClass][] = [
  ["CANCELLED", core.CancelledError],
  ["UNKNOWN", core.UnknownError],
  ["INVALID_ARGUMENT", core.InvalidArgumentError],
  ["DEADLINE_EXCEEDED", core.DeadlineExceededError],
  ["NOT_FOUND", core.NotFoundError],
  ["ALREADY_EXISTS", core.AlreadyExistsError],
  ["PERMISSION_DENIED", core.PermissionDeniedError],
  ["RESOURCE_EXHAUSTED", core.ResourceExhaustedError],
  ["FAILED_PRECONDITION", core.FailedPreconditionError],
  ["ABORTED", core.AbortedError],
  ["OUT_OF_RANGE", core.OutOfRangeError],
  ["UNIMPLEMENTED", core.UnimplementedError],
  ["INTERNAL", core.InternalError],
  ["UNAVAILABLE", core.UnavailableError],
  ["DATA_LOSS", core.DataLossError],
  ["UNAUTHENTICATED", core.UnauthenticatedError],
];

describe("the class of each error code", () => {
  it("covers every code but OK, once", () => {
    const codes = Object.keys(ERROR_CLASS_BY_CODE)
      .map(Number)
      .sort((a, b) => a - b);
    expect(codes).toEqual(Object.values(Code).filter((c) => c !== Code.OK));
    expect(CLASSES.map(([name]) => name).sort()).toEqual(
      Object.keys(Code)
        .filter((n) => n !== "OK")
        .sort(),
    );
  });

  it.each(CLASSES)("%s -> %O and back", (name, Class) => {
    const code = Code[name];
    expect(Class.code).toBe(code);
    expect(ERROR_CLASS_BY_CODE[Class.code]).toBe(Class);

    const cause = new Error("underneath");
    const made = errorForCode(code, "what happened", { cause });
    expect(made).toBeInstanceOf(Class);
    expect(made).toBeInstanceOf(MoelaError);
    expect(made.constructor).toBe(Class);
    expect(made.code).toBe(code);
    expect(made.message).toBe("what happened");
    expect(made.name).toBe(Class.name);
    expect(made.cause).toBe(cause);
    expect(codeName(made.code)).toBe(name);

    const direct = new Class("direct");
    expect(direct.code).toBe(code);
    expect(direct.name).toBe(Class.name);
    expect("cause" in direct).toBe(false);
  });

  it.each([
    { name: "OK", code: Code.OK },
    { name: "out of range", code: 17 },
    { name: "negative", code: -1 },
    { name: "not an integer", code: 1.5 },
  ])("a non-error code ($name) comes back as UNKNOWN", ({ code }) => {
    expect(isErrorCode(code)).toBe(false);
    const made = errorForCode(code, "odd");
    expect(made).toBeInstanceOf(UnknownError);
    expect(made.code).toBe(Code.UNKNOWN);
  });

  it("CheckpointError and ConfigError are FAILED_PRECONDITION errors", () => {
    const checkpoint = new CheckpointError("model.safetensors", "truncated", "embed.weight");
    expect(checkpoint).toBeInstanceOf(FailedPreconditionError);
    expect(checkpoint.code).toBe(Code.FAILED_PRECONDITION);
    expect(checkpoint.name).toBe("CheckpointError");
    expect(checkpoint.message).toBe("model.safetensors [embed.weight]: truncated");
    const config = new ConfigError("hidden_size missing");
    expect(config).toBeInstanceOf(FailedPreconditionError);
    expect(config.code).toBe(Code.FAILED_PRECONDITION);
    expect(config.name).toBe("ConfigError");
  });

  it("CancelledError has a default message", () => {
    expect(new CancelledError().message).toBe("cancelled");
  });

  it("codeName names a number it does not know by the number", () => {
    expect(codeName(99)).toBe("99");
  });
});

describe("the failure reason", () => {
  it("is carried by the error where given, and absent otherwise", () => {
    const e = new UnavailableError("decode step failed: expert host 1 is gone", { reason: FailureReason.DECODE_STEP_FAILED });
    expect(e.reason).toBe(FailureReason.DECODE_STEP_FAILED);
    expect(errorForCode(Code.UNAVAILABLE, "x", { reason: FailureReason.DECODE_STEP_FAILED }).reason).toBe(FailureReason.DECODE_STEP_FAILED);
    const plain = new UnavailableError("gone");
    expect(plain.reason).toBeUndefined();
    expect(Object.keys(plain)).not.toContain("reason");
  });

  it.each([
    { value: FailureReason.DECODE_STEP_FAILED, ok: true },
    { value: "decode step failed", ok: false },
    { value: "", ok: false },
    { value: undefined, ok: false },
    { value: 1, ok: false },
  ])("isFailureReason($value) is $ok", ({ value, ok }) => {
    expect(isFailureReason(value)).toBe(ok);
  });
});

describe("errorMessage", () => {
  it.each([
    { name: "an Error", err: new TypeError("bad type"), message: "bad type" },
    { name: "a MoelaError", err: new InvalidArgumentError("bad request"), message: "bad request" },
    { name: "an Error with an empty message", err: new Error(""), message: "" },
    { name: "a string", err: "plain text", message: "plain text" },
    { name: "a number", err: 42, message: "42" },
    { name: "undefined", err: undefined, message: "undefined" },
    { name: "null", err: null, message: "null" },
    { name: "an object", err: { code: 5 }, message: "[object Object]" },
  ])("of $name", ({ err, message }) => {
    expect(errorMessage(err)).toBe(message);
  });
});
