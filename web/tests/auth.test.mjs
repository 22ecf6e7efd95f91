// Signing in and out: dev user, a new account, a wrong password, a reload.

import assert from 'node:assert/strict';
import {
  DEV_EMAIL,
  connection,
  openApp,
  signInAsDev,
  signInForm,
  signOutButton,
  submitSignIn,
  waitForText,
  waitSignedIn,
  waitVisible,
  webTest,
} from './harness.mjs';

webTest('the sign-in screen has its heading, fields and buttons', {}, async ({ page }) => {
  await openApp(page);
  await waitVisible(page.getByRole('heading', { name: 'Switchboard', exact: true }), 'the heading "Switchboard"');
  const form = signInForm(page);
  await waitVisible(form, 'the "Sign in" form');
  await waitVisible(form.getByRole('textbox', { name: 'Email', exact: true }), 'the "Email" text box');
  await waitVisible(form.getByLabel('Password', { exact: true }), 'the "Password" field');
  await waitVisible(form.getByRole('button', { name: 'Sign in', exact: true }), 'the "Sign in" button');
  await waitVisible(form.getByRole('button', { name: 'Create account', exact: true }), 'the "Create account" button');
  // The server runs with --dev, so the dev button shows.
  await waitVisible(page.getByRole('button', { name: 'Continue as dev user', exact: true }), 'the "Continue as dev user" button');
});

webTest('continue as dev user, reload stays signed in, sign out returns to the form and ends the sign-in', {}, async ({ page, server }) => {
  await signInAsDev(page);
  await waitForText(page.getByRole('banner'), DEV_EMAIL, 'the banner');

  await page.reload();
  await waitSignedIn(page);
  await waitForText(page.getByRole('banner'), DEV_EMAIL, 'the banner after a reload');

  const kept = await page.evaluate(() => JSON.parse(localStorage.getItem('switchboard.session') ?? 'null')?.refresh_token);
  assert.ok(typeof kept === 'string', 'the page keeps a refresh token while signed in');
  // "Sign out" ends the sign-in on the server: the page posts its refresh token to
  // POST /api/auth/logout, which answers 204.
  const [logout] = await Promise.all([
    page.waitForResponse((response) => response.request().method() === 'POST' && new URL(response.url()).pathname === '/api/auth/logout', {
      timeout: 20_000,
    }),
    signOutButton(page).click(),
  ]);
  assert.equal(logout.status(), 204, `POST /api/auth/logout answered ${logout.status()}: ${await logout.text().catch(() => '')}`);
  // The refresh token the page held buys nothing any more. Presented once: a second try would
  // be refused as reuse whether or not the sign-in was ended.
  const refresh = await fetch(`${server.url}/api/auth/refresh`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: kept }),
  });
  const refusal = await refresh.text();
  assert.equal(refresh.status, 401, `the signed-out refresh token is refused: ${refresh.status} ${refusal}`);
  const message = String(JSON.parse(refusal)?.error?.message ?? '');
  assert.match(message, /ended|revoked/, `the refusal says the sign-in was ended: ${message}`);
  assert.doesNotMatch(message, /used before/, `the refusal is not the one of a reused token: ${message}`);
  assert.equal(await page.evaluate(() => localStorage.getItem('switchboard.session')), null, 'no token is left in the browser');
  await waitVisible(signInForm(page), 'the "Sign in" form after "Sign out"');
  assert.equal(await signOutButton(page).count(), 0, '"Sign out" is gone once signed out');
  assert.equal(await connection(page).count(), 0, 'the "Connection" status is gone once signed out');

  // Signed out stays signed out across a reload.
  await page.reload();
  await waitVisible(signInForm(page), 'the "Sign in" form after a reload, signed out');
});

webTest('create an account, sign out, a wrong password is refused, the right one signs in', {}, async ({ page }) => {
  const email = `ada.${Date.now()}@example.com`;
  const password = 'correct horse battery staple';
  await openApp(page);
  await submitSignIn(page, email, password, 'Create account');
  await waitSignedIn(page);
  await waitForText(page.getByRole('banner'), email, 'the banner of the new account');

  await signOutButton(page).click();
  await waitVisible(signInForm(page), 'the "Sign in" form');

  await submitSignIn(page, email, 'not the password', 'Sign in');
  // The server's sentence (crates/server/src/api.rs), in an alert.
  await waitForText(page.getByRole('alert'), 'The email or the password is wrong.', 'the alert of a wrong password');
  assert.equal(await signOutButton(page).count(), 0, 'a wrong password does not sign in');

  await submitSignIn(page, email, password, 'Sign in');
  await waitSignedIn(page);
  await waitForText(page.getByRole('banner'), email, 'the banner after signing in');
});

webTest('creating an account with a taken email shows the server\'s refusal', {}, async ({ page, server }) => {
  const email = `taken.${Date.now()}@example.com`;
  const response = await fetch(`${server.url}/api/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email, password: 'a long enough password' }),
  });
  assert.equal(response.status, 201);
  await openApp(page);
  await submitSignIn(page, email, 'a long enough password', 'Create account');
  // The server's sentence for 409 (crates/server/src/api.rs).
  const text = await waitForText(page.getByRole('alert'), /\S/, 'the alert for the taken email');
  assert.equal(text, 'This email is already registered.', 'the alert holds the server\'s sentence');
});
