import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    // The client library's tests (tests/client/) do not depend on the server's database: they run
    // once, on the embedded run, not again on CI's PostgreSQL run (the server's own tests run on both).
    exclude: ["node_modules/**", "data/**", ...(process.env.DATABASE_URL ? ["tests/client/**"] : [])],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Each test file starts its own servers and databases; two cores, two workers.
    pool: "forks",
    maxWorkers: 2,
  },
});
