// The frontend flow with the clients frontends use, against a live ATLAS:
//   Apollo Client 3 over WebSocket (GraphQLWsLink + graphql-ws),
//   Apollo Client 3 over HTTP multipart subscriptions (HttpLink),
//   graphql-sse (distinct connections mode).
// Per transport: create a thread, load it, subscribe from its sequence, send a message, receive
// events until the first delta, drop the subscription mid-reply, subscribe again with the last
// sequence seen (afterSequence: what graphql-ws and Apollo clients must pass on a re-subscribe),
// receive the rest, and check the text against the stored message.
//
// Usage: node flow.mjs HTTP_URL WS_URL EMAIL PASSWORD [TRANSPORT...]
// Prints one JSON object per line: {"resumed": transport} once a re-subscription received its
// first event (the test then lets the reply finish), {"ok": transport, ...} per transport.
// Exits 1 with {"error": ...} on the first failure.
import { readFileSync } from 'node:fs';
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client/core/index.js';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions/index.js';
import { createClient as createWsClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';
import { buildSchema } from 'graphql';
import WebSocket from 'ws';

const [httpUrl, wsUrl, email, password, ...chosen] = process.argv.slice(2);
const transports = chosen.length ? chosen : ['apollo-ws', 'apollo-http', 'graphql-sse'];
const graphqlUrl = `${httpUrl}/graphql`;
const say = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const fail = (message) => {
  say({ error: message });
  process.exit(1);
};
const check = (condition, message) => condition || fail(message);

const sdl = readFileSync(new URL('../../schema/schema.graphql', import.meta.url), 'utf8');
const schema = buildSchema(sdl);
// Apollo needs the members of unions and interfaces to match fragments on them.
const possibleTypes = {};
for (const type of Object.values(schema.getTypeMap())) {
  if (type.name.startsWith('__')) continue;
  if ('getTypes' in type) possibleTypes[type.name] = type.getTypes().map((t) => t.name);
  else if ('getInterfaces' in type) {
    for (const parent of type.getInterfaces()) (possibleTypes[parent.name] ??= []).push(type.name);
  }
}
// Load-then-subscribe: when the schema has Thread.lastEventSequence, the loaded thread says
// which sequence to subscribe after; until then a new thread starts at 0.
const threadFields = schema.getType('Thread').getFields();
const hasLastEventSequence = 'lastEventSequence' in threadFields;

const operations = readFileSync(new URL('./operations.graphql', import.meta.url), 'utf8');
const documents = gql(operations);
const operation = (name) => ({
  kind: 'Document',
  definitions: [
    ...documents.definitions.filter((d) => d.kind === 'OperationDefinition' && d.name.value === name),
  ],
});
const THREAD = hasLastEventSequence
  ? gql`query Thread($id: ID!) { thread(id: $id) { id lastEventSequence messages(last: 50) { nodes { id role content } } } }`
  : gql`query Thread($id: ID!) { thread(id: $id) { id messages(last: 50) { nodes { id role content } } } }`;
const EVENTS = operation('ThreadEvents');
const EVENTS_TEXT = operations.slice(operations.indexOf('subscription ThreadEvents'));

function apollo(link) {
  return new ApolloClient({ link, cache: new InMemoryCache({ possibleTypes }) });
}

const anonymous = apollo(new HttpLink({ uri: graphqlUrl, fetch }));
const login = await anonymous.mutate({
  mutation: operation('Login'),
  variables: { input: { email, password } },
});
const token = login.data.login.accessToken;
const authorization = `Bearer ${token}`;
const http = apollo(new HttpLink({ uri: graphqlUrl, fetch, headers: { Authorization: authorization } }));

const project = (
  await http.mutate({
    mutation: operation('CreateProject'),
    variables: { input: { name: `Clients ${Date.now()}`, description: 'client acceptance' } },
  })
).data.createProject;
const assistant = (
  await http.mutate({
    mutation: operation('CreateAssistant'),
    variables: { input: { name: 'Client bot', projectId: project.id, instructions: 'Be brief.' } },
  })
).data.createAssistant;

// One subscription, whatever the transport: {dispose}, calling onEvent(event) for each event.
function subscribe(transport, clients, variables, onEvent, onError) {
  if (transport === 'graphql-sse') {
    const dispose = clients.sse.subscribe(
      { query: EVENTS_TEXT, variables },
      {
        next: (result) => (result.errors ? onError(result.errors) : onEvent(result.data.threadEvents)),
        error: onError,
        complete: () => {},
      },
    );
    return { dispose };
  }
  const client = transport === 'apollo-ws' ? clients.ws : http;
  const subscription = client
    .subscribe({ query: EVENTS, variables, fetchPolicy: 'no-cache' })
    .subscribe({
      next: (result) => (result.errors ? onError(result.errors) : onEvent(result.data.threadEvents)),
      error: onError,
    });
  return { dispose: () => subscription.unsubscribe() };
}

// Events of one subscription, awaited one by one.
function eventQueue() {
  const waiting = [];
  const ready = [];
  const push = (item) => (waiting.length ? waiting.shift()(item) : ready.push(item));
  return {
    onEvent: (event) => push({ event }),
    onError: (error) => push({ error }),
    next: (label) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no event within 20 s (${label})`)), 20_000);
        const take = ({ event, error }) => {
          clearTimeout(timer);
          error ? reject(new Error(`${label}: ${JSON.stringify(error)}`)) : resolve(event);
        };
        ready.length ? take(ready.shift()) : waiting.push(take);
      }),
  };
}

async function runFlow(transport, clients) {
  const thread = (
    await http.mutate({
      mutation: operation('CreateThread'),
      variables: { input: { projectId: project.id, assistantId: assistant.id, title: transport } },
    })
  ).data.createThread;
  const loaded = (await http.query({ query: THREAD, variables: { id: thread.id }, fetchPolicy: 'network-only' }))
    .data.thread;
  const startAfter = loaded.lastEventSequence ?? 0;
  const events = [];

  let queue = eventQueue();
  let live = subscribe(transport, clients, { threadId: thread.id, afterSequence: startAfter }, queue.onEvent, queue.onError);
  // Over the WebSocket and graphql-sse nothing says when the server has subscribed; the
  // afterSequence replay covers the events published before it did.
  const sent = await http.mutate({
    mutation: operation('SendMessage'),
    variables: { input: { threadId: thread.id, content: `Hello over ${transport}` } },
  });
  const replyId = sent.data.sendMessage.assistantMessage.id;
  for (;;) {
    const event = await queue.next(`${transport} first subscription`);
    events.push(event);
    if (event.__typename === 'MessageDelta') break;
    check(event.__typename === 'MessageCreated', `${transport}: unexpected ${event.__typename} before a delta`);
  }
  live.dispose();

  // Re-subscribe mid-reply with the last sequence seen.
  const resumeAfter = events.at(-1).sequence;
  queue = eventQueue();
  live = subscribe(transport, clients, { threadId: thread.id, afterSequence: resumeAfter }, queue.onEvent, queue.onError);
  let event = await queue.next(`${transport} re-subscription`);
  say({ resumed: transport, after: resumeAfter });
  for (;;) {
    events.push(event);
    if (event.__typename === 'MessageCompleted' || event.__typename === 'MessageFailed') break;
    event = await queue.next(`${transport} re-subscription`);
  }
  live.dispose();

  const sequences = events.map((e) => e.sequence);
  check(
    sequences.every((s, i) => i === 0 || s > sequences[i - 1]),
    `${transport}: sequences not strictly increasing (a duplicate or a reorder): ${sequences}`,
  );
  check(sequences[0] > startAfter, `${transport}: an event at or before afterSequence ${startAfter}`);
  const final = events.at(-1);
  check(final.__typename === 'MessageCompleted', `${transport}: the reply ended ${final.__typename}`);
  check(final.message.id === replyId, `${transport}: completed another message`);
  const text = events.filter((e) => e.__typename === 'MessageDelta' && e.messageId === replyId).map((e) => e.delta).join('');
  const stored = (await http.query({ query: THREAD, variables: { id: thread.id }, fetchPolicy: 'network-only' }))
    .data.thread.messages.nodes.find((m) => m.id === replyId).content;
  check(text === stored, `${transport}: deltas ${JSON.stringify(text)} != stored ${JSON.stringify(stored)}`);
  check(final.message.content === stored, `${transport}: completed content differs from the stored one`);
  say({ ok: transport, events: events.length, resumedAfter: resumeAfter, text, lastEventSequence: hasLastEventSequence });
}

const clients = {
  ws: apollo(
    new GraphQLWsLink(
      createWsClient({ url: wsUrl, webSocketImpl: WebSocket, connectionParams: { Authorization: authorization } }),
    ),
  ),
  sse: createSseClient({ url: graphqlUrl, headers: { Authorization: authorization }, retryAttempts: 0 }),
};

try {
  for (const transport of transports) await runFlow(transport, clients);
} catch (error) {
  fail(String(error?.stack ?? error));
}
await clients.ws.link.client?.dispose?.();
process.exit(0);
