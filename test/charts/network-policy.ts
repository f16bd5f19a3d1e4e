/**
 * Kubernetes NetworkPolicy ingress semantics over rendered manifests, enough to ask "may a pod with these
 * labels, in this namespace, open a connection to that pod's named port?": a pod no ingress policy selects
 * admits everything; a selected pod admits a connection when some rule of some selecting policy matches
 * both the port (by number or container port name; no ports = every port) and the peer (no from = every
 * source; podSelector = pods of the policy's namespace; namespaceSelector = pods of matching namespaces;
 * both = pods matching both). ipBlock peers match no pod here.
 */

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- rendered YAML

export interface PodRef {
  readonly namespace: string;
  readonly namespaceLabels: Readonly<Record<string, string>>;
  readonly labels: Readonly<Record<string, string>>;
  /** container ports by name: number */
  readonly ports: Readonly<Record<string, number>>;
}

/** LabelSelector matching (matchLabels and matchExpressions); an empty selector matches everything. */
export function selectorMatches(selector: Obj | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (selector === undefined || selector === null) return true;
  for (const [k, v] of Object.entries((selector.matchLabels ?? {}) as Record<string, string>)) if (labels[k] !== v) return false;
  for (const e of (selector.matchExpressions ?? []) as Obj[]) {
    const has = Object.hasOwn(labels, e.key);
    const values = (e.values ?? []) as string[];
    let ok: boolean;
    switch (e.operator) {
      case "In":
        ok = has && values.includes(labels[e.key]!);
        break;
      case "NotIn":
        ok = !has || !values.includes(labels[e.key]!);
        break;
      case "Exists":
        ok = has;
        break;
      case "DoesNotExist":
        ok = !has;
        break;
      default:
        throw new Error(`unknown selector operator ${String(e.operator)}`);
    }
    if (!ok) return false;
  }
  return true;
}

function isIngressPolicy(p: Obj): boolean {
  const types = p.spec.policyTypes as string[] | undefined;
  return types === undefined ? true : types.includes("Ingress");
}

function portMatches(rulePorts: Obj[] | undefined, dst: PodRef, portName: string): boolean {
  if (rulePorts === undefined || rulePorts.length === 0) return true;
  const number = dst.ports[portName];
  if (number === undefined) throw new Error(`the destination pod has no port named ${portName}`);
  return rulePorts.some((p) => {
    if ((p.protocol ?? "TCP") !== "TCP") return false;
    if (p.port === undefined) return true;
    if (typeof p.port === "number") return p.endPort === undefined ? p.port === number : p.port <= number && number <= p.endPort;
    return p.port === portName;
  });
}

function peerMatches(peer: Obj, policyNamespace: string, src: PodRef): boolean {
  if (peer.ipBlock !== undefined) return false;
  const nsOk = peer.namespaceSelector === undefined ? src.namespace === policyNamespace : selectorMatches(peer.namespaceSelector, src.namespaceLabels);
  const podOk = peer.podSelector === undefined ? true : selectorMatches(peer.podSelector, src.labels);
  return nsOk && podOk;
}

/** Whether `src` may connect to `dst`'s port `portName` under `policies` (every NetworkPolicy rendered into `dst`'s namespace). */
export function ingressAllowed(policies: readonly Obj[], src: PodRef, dst: PodRef, portName: string): boolean {
  const selecting = policies.filter(
    (p) => (p.metadata.namespace ?? dst.namespace) === dst.namespace && isIngressPolicy(p) && selectorMatches(p.spec.podSelector, dst.labels),
  );
  if (selecting.length === 0) return true;
  return selecting.some((p) =>
    ((p.spec.ingress ?? []) as Obj[]).some((rule) => {
      if (!portMatches(rule.ports as Obj[] | undefined, dst, portName)) return false;
      const from = (rule.from ?? []) as Obj[];
      return from.length === 0 || from.some((peer) => peerMatches(peer, p.metadata.namespace ?? dst.namespace, src));
    }),
  );
}
