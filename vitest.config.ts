import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "data/**"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Each test file starts its own servers and databases; two cores, two workers.
    pool: "forks",
    maxWorkers: 2,
  },
});
