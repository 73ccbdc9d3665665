// Validates shared/contract/asyncapi.json with the AsyncAPI parser (its $refs to
// shared/contract/schemas/events/ resolved from the file), printing each problem;
// exits 1 on any error. Run by scripts/contract.sh with NODE_PATH set to
// where @asyncapi/parser is installed.
import { resolve } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(resolve(process.env.NODE_PATH || '.', 'x.js'));
const { Parser, fromFile } = require('@asyncapi/parser');

const path = resolve(process.argv[2] || 'shared/contract/asyncapi.json');
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join('.') : '(document)';
  console.log(`${['error', 'warning', 'info', 'hint'][d.severity]}: ${where}: ${d.message}`);
}
if (!document || errors.length > 0) {
  console.error(`${path}: ${errors.length} error(s)`);
  process.exit(1);
}
const messages = document.allMessages().length;
console.log(`${path}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels, ${messages} messages`);
