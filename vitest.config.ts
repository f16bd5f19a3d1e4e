import { availableParallelism } from "node:os";
import { defaultServerConditions } from "vite";
import { defineConfig } from "vitest/config";

// "moela-source": workspace packages that publish built files (@moela/client) resolve to their TypeScript source here.
const conditions = ["moela-source", ...defaultServerConditions];

// Three layers (test/README.md says what belongs where). `vitest run` runs them in order: unit in parallel,
// then integration and e2e one file at a time. `--project <name>` runs one layer.
export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions } },
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    // Vitest's default for `run` is one core less than the machine has, which on the 2-core CI machines is one
    // file at a time; its main process mostly waits, so the unit layer gets every core (165 s -> 100 s there).
    maxWorkers: availableParallelism(),
    reporters: ["default"],
    projects: [
      // One module in-process: no child processes, no Redis, no external tools.
      { extends: true, test: { name: "unit", include: ["test/unit/**/*.test.ts"], sequence: { groupOrder: 0 } } },
      // Real neighbours: Redis, gRPC on 127.0.0.1, stand-in child processes, helm, docker-compose, promtool.
      {
        extends: true,
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts", "test/charts/**/*.test.ts", "test/deploy/**/*.test.ts"],
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
      // The moela CLI and services as real processes.
      { extends: true, test: { name: "e2e", include: ["test/e2e/**/*.test.ts"], fileParallelism: false, sequence: { groupOrder: 2 } } },
    ],
  },
});
