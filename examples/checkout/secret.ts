/** The public development secret of the demo. Never use it anywhere else: anyone can read it here. */
export const DEV_SECRET = 'fastify-handoff demo secret: NOT FOR PRODUCTION, set HANDOFF_SECRET'
