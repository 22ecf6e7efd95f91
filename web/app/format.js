// Figures as a person reads them.

const whole = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const dollars = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', maximumFractionDigits: 2 });
const cents = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', maximumFractionDigits: 6 });

/** @param {number} value */
export function count(value) {
  return whole.format(value);
}

/** A cost: `$1,234.56`; under a cent with up to six decimals. @param {number} value */
export function usd(value) {
  return Math.abs(value) > 0 && Math.abs(value) < 0.01 ? cents.format(value) : dollars.format(value);
}

/** A duration: `850 ms`, `1.2 s`, `2 min 5 s`. @param {number} ms */
export function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** Seconds since the run began: `1.25s`. @param {number} ms */
export function offset(ms) {
  return `${(Math.max(0, ms) / 1000).toFixed(2)}s`;
}

/** A date and time in the reader's zone. @param {string} iso */
export function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay
    ? date.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

/**
 * A value shortened to one line for the timeline: JSON, cut at `limit` characters.
 * @param {unknown} value
 * @param {number} [limit]
 */
export function summary(value, limit = 160) {
  let text;
  try {
    text = typeof value === 'string' ? value : JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = '';
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}
