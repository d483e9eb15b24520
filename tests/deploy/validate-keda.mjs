// Validates KEDA ScaledObjects against the KEDA CRD schema (the @kubernetes-models/keda models,
// from `make tools`; MODULES names their node_modules). Reads a JSON array of Kubernetes documents
// on stdin; prints one JSON object: how many ScaledObjects were validated, what was wrong with any.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.MODULES;
const url = pathToFileURL(join(modules, "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js"));
const { ScaledObject } = await import(url.href);

let input = "";
for await (const chunk of process.stdin) input += chunk;
let validated = 0;
const errors = [];
for (const doc of JSON.parse(input)) {
  if (doc.kind !== "ScaledObject") continue;
  try {
    new ScaledObject(doc).validate();
  } catch (e) {
    errors.push(`${doc.metadata && doc.metadata.name}: ${e.message}`);
  }
  validated++;
}
console.log(JSON.stringify({ validated, errors }));
