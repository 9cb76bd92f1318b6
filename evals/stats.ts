// The rate statistics live in util/stats.ts (the report renders them too); re-exported for the measuring code.
export { formatRate, rateOf, wilson, worstHalfWidth, type Rate } from "../util/stats.ts";
