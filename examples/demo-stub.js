// The checkout example (issue 7) is not built yet. Until it lands, `npm run demo` says so instead of failing.
console.log('fastify-handoff: the e-commerce checkout demo is coming (see README, "Example").')
console.log('Meanwhile `npm test` runs every test against private redis-server processes.')
