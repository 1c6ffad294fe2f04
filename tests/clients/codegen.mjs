// graphql-codegen (typescript + typescript-operations) over ATLAS's schema and operations.graphql.
// Usage: node codegen.mjs SCHEMA.graphql OUT_DIR
// Writes OUT_DIR/schema.ts (typescript: every schema type) and OUT_DIR/operations.ts
// (typescript-operations: each operation's result and variables, with the inputs and enums it
// uses; since codegen 6 the two plugins go to separate files, as they would define those twice).
// Custom scalars are mapped (strictScalars: an unmapped one fails instead of becoming `any`).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { codegen } from '@graphql-codegen/core';
import * as typescript from '@graphql-codegen/typescript';
import * as typescriptOperations from '@graphql-codegen/typescript-operations';
import { buildSchema, parse, printSchema } from 'graphql';

const [schemaPath, outDir] = process.argv.slice(2);
const schema = buildSchema(readFileSync(schemaPath, 'utf8'));
const documentsPath = new URL('./operations.graphql', import.meta.url);
const config = {
  strictScalars: true,
  scalars: {
    DateTime: 'string',
    JSON: 'unknown',
    Upload: 'Blob',
  },
  enumsAsTypes: true,
  useTypeImports: true,
};
const documents = [
  { location: 'operations.graphql', document: parse(readFileSync(documentsPath, 'utf8')) },
];
const outputs = {
  'schema.ts': { plugins: [{ typescript: {} }], documents: [] },
  'operations.ts': { plugins: [{ typescriptOperations: {} }], documents },
};
mkdirSync(outDir, { recursive: true });
for (const [name, { plugins, documents: docs }] of Object.entries(outputs)) {
  const filename = join(outDir, name);
  const output = await codegen({
    filename,
    schema: parse(printSchema(schema)),
    schemaAst: schema,
    documents: docs,
    config,
    plugins,
    pluginMap: { typescript, typescriptOperations },
  });
  writeFileSync(filename, output);
  console.log(JSON.stringify({ codegen: filename, bytes: output.length }));
}
