// `npm run docs`: regenerates the generated parts of the README (the configuration table).
import { readFile, writeFile } from "node:fs/promises";
import { configTableMarkdown } from "../server/config.ts";

const START = /<!-- config-table:start[^>]*-->/;
const END = "<!-- config-table:end -->";

export function withConfigTable(readme: string): string {
  const start = START.exec(readme);
  const end = readme.indexOf(END);
  if (!start || end < 0) throw new Error("README.md lacks the config-table markers");
  return readme.slice(0, start.index + start[0].length) + "\n" + configTableMarkdown() + "\n" + readme.slice(end);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = new URL("../README.md", import.meta.url);
  await writeFile(file, withConfigTable(await readFile(file, "utf8")));
}
