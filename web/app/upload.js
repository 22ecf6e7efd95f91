// Uploading usage data from a file: NDJSON, a JSON array (`.json`) or CSV with a header (`.csv`),
// read here and sent in chunks as `switchboard ingest` sends them (at most 10 000 rows or 4 MB a
// request, as NDJSON), so a large file shows its progress and a refused row is named by its line
// in the file.

const CHUNK_ROWS = 10_000;
const CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * @typedef {{ line: number, row: unknown }} Row
 * @typedef {{ line: number, error: string }} Refused
 * @typedef {{ stored: number, refused: Refused[], message: string | null }} Outcome
 */

/** A file that cannot be read as rows, with the sentence that says why. */
export class UnreadableFile extends Error {}

/**
 * The file's rows with their lines in the file.
 * @param {File} file
 * @returns {Promise<Row[]>}
 */
export async function readRows(file) {
  const text = await file.text();
  const name = file.name.toLowerCase();
  if (name.endsWith('.csv')) return csvRows(text, file.name);
  if (name.endsWith('.json')) {
    let value;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw new UnreadableFile(`${file.name} is not valid JSON: ${error instanceof Error ? error.message : error}`);
    }
    if (!Array.isArray(value)) throw new UnreadableFile(`${file.name} must hold a JSON array of calls.`);
    return value.map((row, index) => ({ line: index + 1, row }));
  }
  /** @type {Row[]} */
  const rows = [];
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index += 1) {
    const line = lines[index].trim();
    if (line === '') continue;
    try {
      rows.push({ line: index + 1, row: JSON.parse(line) });
    } catch {
      throw new UnreadableFile(`Line ${index + 1} of ${file.name} is not valid JSON.`);
    }
  }
  return rows;
}

/**
 * CSV with a header: each row maps each column to its trimmed cell, leaving out empty cells,
 * with numbers and `batch` read as the server expects (as `switchboard ingest` reads them).
 * @param {string} text
 * @param {string} name
 * @returns {Row[]}
 */
function csvRows(text, name) {
  const records = parseCsv(text, name);
  if (records.length === 0) return [];
  const header = records[0].cells.map((cell) => cell.trim());
  return records.slice(1).map(({ line, cells }) => {
    /** @type {Record<string, unknown>} */
    const row = {};
    header.forEach((column, index) => {
      const cell = (cells[index] ?? '').trim();
      if (cell !== '') row[column] = csvValue(column, cell);
    });
    return { line, row };
  });
}

/**
 * @param {string} column
 * @param {string} cell
 */
function csvValue(column, cell) {
  if (column === 'input_tokens' || column === 'output_tokens') return /^\d+$/.test(cell) ? Number(cell) : cell;
  if (column === 'latency_ms' || column === 'cost_usd') {
    const number = Number(cell);
    return Number.isFinite(number) ? number : cell;
  }
  if (column === 'batch') {
    const lower = cell.toLowerCase();
    if (['true', '1', 'yes'].includes(lower)) return true;
    if (['false', '0', 'no'].includes(lower)) return false;
  }
  return cell;
}

/**
 * RFC 4180 records (quoted cells may hold commas, quotes and line breaks), each with the line it
 * starts on; blank lines are skipped.
 * @param {string} text
 * @param {string} name
 * @returns {{ line: number, cells: string[] }[]}
 */
function parseCsv(text, name) {
  /** @type {{ line: number, cells: string[] }[]} */
  const records = [];
  let cells = [];
  let cell = '';
  let quoted = false;
  let line = 1;
  let start = 1;
  let any = false;
  for (let index = 0; index < text.length; index += 1) {
    const char = text[index];
    if (quoted) {
      if (char === '"') {
        if (text[index + 1] === '"') {
          cell += '"';
          index += 1;
        } else {
          quoted = false;
        }
      } else {
        if (char === '\n') line += 1;
        cell += char;
      }
      continue;
    }
    if (char === '"') {
      quoted = true;
      any = true;
    } else if (char === ',') {
      cells.push(cell);
      cell = '';
      any = true;
    } else if (char === '\n' || char === '\r') {
      if (char === '\r' && text[index + 1] === '\n') index += 1;
      if (any || cell !== '') {
        cells.push(cell);
        records.push({ line: start, cells });
      }
      cells = [];
      cell = '';
      any = false;
      line += 1;
      start = line;
    } else {
      cell += char;
      any = true;
    }
  }
  if (quoted) throw new UnreadableFile(`${name} is not valid CSV: a quote opened on line ${start} is never closed.`);
  if (any || cell !== '') {
    cells.push(cell);
    records.push({ line: start, cells });
  }
  return records;
}

/**
 * Uploads the rows in chunks; stops at the first chunk the server refuses. `progress` is told
 * the rows done so far.
 * @param {import('./api.js').Session} session
 * @param {Row[]} rows
 * @param {(done: number) => void} progress
 * @returns {Promise<Outcome>}
 */
export async function upload(session, rows, progress) {
  let stored = 0;
  let start = 0;
  const encoder = new TextEncoder();
  while (start < rows.length) {
    const parts = [];
    let bytes = 0;
    let end = start;
    while (end < rows.length && end - start < CHUNK_ROWS && bytes < CHUNK_BYTES) {
      const json = JSON.stringify(rows[end].row);
      parts.push(json);
      bytes += encoder.encode(json).length + 1;
      end += 1;
    }
    try {
      const answer = await session.request('POST', '/api/workload-events', {
        body: `${parts.join('\n')}\n`,
        contentType: 'application/x-ndjson',
      });
      stored += Number(answer?.accepted ?? 0);
    } catch (error) {
      const body = /** @type {any} */ (error)?.body;
      const listed = Array.isArray(body?.error?.rows) ? body.error.rows : [];
      const refused = listed.map((/** @type {any} */ row) => {
        const inChunk = Math.max(1, Number(row?.line ?? 1)) - 1;
        return { line: rows[start + inChunk]?.line ?? 0, error: String(row?.error ?? '') };
      });
      const before = stored > 0 ? ` The ${stored.toLocaleString('en-US')} calls before them were stored.` : ' Nothing was stored.';
      const message =
        refused.length > 0
          ? `${refused.length} row${refused.length === 1 ? ' was' : 's were'} refused in calls ${start + 1} to ${end}.${before}`
          : `The upload failed: ${error instanceof Error ? error.message : error}${before}`;
      return { stored, refused, message };
    }
    start = end;
    progress(start);
  }
  return { stored, refused: [], message: null };
}
