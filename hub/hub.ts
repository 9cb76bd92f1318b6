// The Hub client's face: pull a model into the standard Hugging Face cache, and publish a re-aligned
// model. It re-exports the public API of the room's modules, one concern each:
//   errors.ts    HubError and its codes; HTTP status → error; token redaction
//   http.ts      which Hub (hubUrl, $HF_ENDPOINT), one request with retries, backoff and idle timeout
//   cache.ts     the Python-compatible cache layout: root, repo folders, safe names, blobs, snapshots
//   download.ts  one file into the cache: verified, resumed with HTTP Range
//   pull.ts      pullModel, online and offline
//   publish.ts   publishModel, idempotent by settings_hash
//   repo.ts      repo-id grammar for model arguments, and the token policy
// All network calls go through @huggingface/hub (modelInfo, listFiles, fileDownloadInfo,
// downloadFile, whoAmI, createRepo, uploadFiles) against `hubUrl` (option, $HF_ENDPOINT, or
// https://huggingface.co), so tests against tests/helpers/fakehub.ts exercise the same code users run.
export { HubError, type HubErrorCode } from "./errors.ts";
export { DEFAULT_HUB_URL, resolveHubUrl } from "./http.ts";
export { isSafeRepoPath, isValidRepoName, repoCacheDir, resolveCacheRoot, validateRepoId } from "./cache.ts";
export { pullModel, type PullOptions, type PullProgress, type PullResult } from "./pull.ts";
export { publishModel, resolvePublishRepo, type PublishOptions, type PublishResult } from "./publish.ts";
