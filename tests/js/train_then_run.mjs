// The official replicate JavaScript client's train-then-run, default settings: the photos uploaded
// with files.create (the client's trainings.create sends input as it is), a training on Replicate's
// model-scoped route, polled with trainings.get, then replicate.run of the version it built.
// Usage: node train_then_run.mjs BASE_URL TOKEN TRAINER_VERSION destination PHOTOS_ZIP
// Prints one JSON line: {training: {id, status, version}, outputs: [{status, png}]}.
import { readFile } from "node:fs/promises";
import Replicate from "replicate";

const [baseUrl, auth, trainerVersion, destination, photosPath] = process.argv.slice(2);
const replicate = new Replicate({ auth, baseUrl: `${baseUrl}/v1` });
const photos = await replicate.files.create(await readFile(photosPath));
let training = await replicate.trainings.create("dreambuild", "dreambooth", trainerVersion, {
  destination,
  input: {
    instance_prompt: "a photo of a cjw toy", class_prompt: "a photo of a toy", instance_data: photos.urls.get,
    max_train_steps: 2, resolution: 64, with_prior_preservation: false,
  },
});
while (!["succeeded", "failed", "canceled"].includes(training.status)) {
  await new Promise((resolve) => setTimeout(resolve, 1000));
  training = await replicate.trainings.get(training.id);
}
const result = { training: { id: training.id, status: training.status, error: training.error, version: training.output?.version } };
if (training.status === "succeeded") {
  const output = await replicate.run(training.output.version, {
    input: { prompt: "a photo of a cjw toy", num_inference_steps: 2, width: 64, height: 64, seed: 1, disable_safety_check: true },
  });
  result.outputs = [];
  for (const item of output) {
    const response = await fetch(typeof item === "string" ? item : item.url().toString()); // a signed URL: no token
    const bytes = new Uint8Array(await response.arrayBuffer());
    result.outputs.push({ status: response.status, png: bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47 });
  }
}
console.log(JSON.stringify(result));
