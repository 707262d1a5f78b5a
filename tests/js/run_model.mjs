// The official replicate JavaScript client against dreambuild: replicate.run with a file input
// (a Buffer, uploaded by the client to /v1/files first), then the output read with plain fetch.
// Usage: node run_model.mjs BASE_URL TOKEN owner/name:version IMAGE_PATH
// Prints one JSON line: {outputs: [{url, bytes, png}], status}.
import { readFile } from "node:fs/promises";
import Replicate from "replicate";

const [baseUrl, auth, ref, imagePath] = process.argv.slice(2);
const replicate = new Replicate({ auth, baseUrl: `${baseUrl}/v1` });
const image = await readFile(imagePath);
const output = await replicate.run(ref, {
  input: { image, prompt_strength: 0.5, num_inference_steps: 2, width: 64, height: 64, seed: 3, disable_safety_check: true },
});
const outputs = [];
for (const item of output) {
  const url = typeof item === "string" ? item : item.url().toString();
  const response = await fetch(url); // no token: a signed URL
  const bytes = new Uint8Array(await response.arrayBuffer());
  outputs.push({ url, status: response.status, bytes: bytes.length, png: bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47 });
}
console.log(JSON.stringify({ outputs }));
