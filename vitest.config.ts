import { defaultServerConditions } from "vite";
import { defineConfig } from "vitest/config";

// "moela-source": workspace packages that publish built files (@moela/client) resolve to their TypeScript source here.
const conditions = ["moela-source", ...defaultServerConditions];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions } },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    reporters: ["default"],
  },
});
