#!/usr/bin/env node
// Writes README.md's configuration table from SETTINGS (functions/src/config.ts, compiled), the one
// list of settings; functions/test/config.test.ts fails when the two disagree. Run: npm run docs:config
const fs = require('fs');
const path = require('path');
const { SETTINGS } = require('../functions/build/config');

const readme = path.join(__dirname, '..', 'README.md');
const text = fs.readFileSync(readme, 'utf8');
const marker = '<!-- config-table: checked by functions/test/config.test.ts against SETTINGS in config.ts -->';
const [before, rest] = text.split(marker);
const after = rest.split('<!-- /config-table -->')[1];
const rows = SETTINGS.map((s) => `| \`${s.env}\` | \`${s.default}\` | ${s.description} |`);
const table = ['', '| variable | default | meaning |', '|---|---|---|', ...rows, ''].join('\n');
fs.writeFileSync(readme, `${before}${marker}${table}<!-- /config-table -->${after}`);
console.log(`README.md: configuration table written (${rows.length} settings)`);
