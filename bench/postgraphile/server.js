// PostGraphile v4 on the bench database, for bench/compiled_reads.py (side by side with ATLAS).
//
//   DATABASE_URL=postgres://... JWT_SECRET=... PORT=5000 node server.js
//
// Authentication comparable to ATLAS's: the same HS256 access token (issuer and audience
// checked), its claims land in `jwt.claims.*`, the request runs as the role
// `atlas_bench_viewer`, and row-level security policies (set up by compiled_reads.py) check
// that the token's session is live and its user active, then show the projects the viewer
// belongs to, their members and threads.
"use strict";

const http = require("http");
const { postgraphile } = require("postgraphile");

const port = Number(process.env.PORT || 5000);
const middleware = postgraphile(process.env.DATABASE_URL, "public", {
  jwtSecret: process.env.JWT_SECRET,
  jwtVerifyOptions: {
    audience: [process.env.JWT_AUDIENCE || "atlas-gql"],
    issuer: process.env.JWT_ISSUER || "atlas-gql",
    algorithms: ["HS256"],
  },
  pgDefaultRole: "atlas_bench_viewer",
  // Only what the role is granted (no password hashes, no sessions).
  ignoreRBAC: false,
  disableQueryLog: true,
  graphiql: false,
  enableQueryBatching: false,
  retryOnInitFail: false,
  watchPg: false,
});

http.createServer(middleware).listen(port, "127.0.0.1", () => {
  process.stdout.write(`PostGraphile serving http://127.0.0.1:${port}/graphql\n`);
});
