// Usage: npm install && node audit.mjs http://127.0.0.1:8000/graphql
// Prints every audit that is not "ok" and a summary line; exits 1 on any error.
import { auditServer } from 'graphql-http';
const url = process.argv[2];
const results = await auditServer({ url });
let errors = 0, warnings = 0;
for (const r of results) {
  if (r.status === 'ok') continue;
  if (r.status === 'error') errors++; else warnings++;
  console.log(`${r.status.toUpperCase()} ${r.id} ${r.name}: ${r.reason}`);
}
console.log(`${results.length} audits, ${errors} errors, ${warnings} warnings`);
process.exit(errors ? 1 : 0);
