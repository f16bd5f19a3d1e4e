/**
 * A checker of rendered pod specs against the Kubernetes Pod Security Standards, "restricted" level
 * (https://kubernetes.io/docs/concepts/security/pod-security-standards/, the baseline controls plus the
 * restricted ones), with readOnlyRootFilesystem on top, which the chart also promises. It returns every
 * violation as text ("container router: allowPrivilegeEscalation is not false"), empty when the pod passes,
 * so a test can show all of them at once and can feed it a bad spec to see it fail.
 */

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- rendered YAML

/** Volume types the restricted level allows. */
const RESTRICTED_VOLUME_TYPES = new Set(["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"]);
/** The one capability a restricted container may add back. */
const ADDABLE_CAPABILITIES = new Set(["NET_BIND_SERVICE"]);
/** Baseline: sysctls any pod may set. */
const SAFE_SYSCTLS = new Set([
  "kernel.shm_rmid_forced",
  "net.ipv4.ip_local_port_range",
  "net.ipv4.ip_unprivileged_port_start",
  "net.ipv4.tcp_syncookies",
  "net.ipv4.ping_group_range",
  "net.ipv4.ip_local_reserved_ports",
  "net.ipv4.tcp_keepalive_time",
  "net.ipv4.tcp_fin_timeout",
  "net.ipv4.tcp_keepalive_intvl",
  "net.ipv4.tcp_keepalive_probes",
]);

function allContainers(pod: Obj): Obj[] {
  return [...((pod.initContainers ?? []) as Obj[]), ...((pod.containers ?? []) as Obj[]), ...((pod.ephemeralContainers ?? []) as Obj[])];
}

/** Every restricted-level violation of one pod spec (spec.template.spec of a workload). */
export function restrictedViolations(pod: Obj): string[] {
  const out: string[] = [];
  const psc = (pod.securityContext ?? {}) as Obj;

  // baseline: host namespaces, host ports, hostPath, sysctls, AppArmor, SELinux, /proc mount
  for (const f of ["hostNetwork", "hostPID", "hostIPC"]) if (pod[f] === true) out.push(`pod: ${f} is true`);
  for (const s of (psc.sysctls ?? []) as Obj[]) if (!SAFE_SYSCTLS.has(s.name)) out.push(`pod: unsafe sysctl ${s.name}`);
  if (psc.appArmorProfile?.type === "Unconfined") out.push("pod: AppArmor profile Unconfined");
  const seType = psc.seLinuxOptions?.type;
  if (seType !== undefined && !["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"].includes(seType))
    out.push(`pod: SELinux type ${seType}`);
  if (psc.seLinuxOptions?.user || psc.seLinuxOptions?.role) out.push("pod: custom SELinux user or role");
  if (psc.runAsUser === 0) out.push("pod: runAsUser is 0");

  // restricted: volume types
  for (const v of (pod.volumes ?? []) as Obj[]) {
    const types = Object.keys(v).filter((k) => k !== "name");
    for (const t of types) if (!RESTRICTED_VOLUME_TYPES.has(t)) out.push(`volume ${v.name}: type ${t} is not allowed`);
  }

  const podSeccomp = psc.seccompProfile?.type as string | undefined;
  if (podSeccomp !== undefined && !["RuntimeDefault", "Localhost"].includes(podSeccomp)) out.push(`pod: seccompProfile ${podSeccomp}`);

  for (const c of allContainers(pod)) {
    const where = `container ${c.name}`;
    const sc = (c.securityContext ?? {}) as Obj;
    if (sc.privileged === true) out.push(`${where}: privileged`);
    for (const p of (c.ports ?? []) as Obj[]) if (p.hostPort !== undefined && p.hostPort !== 0) out.push(`${where}: hostPort ${p.hostPort}`);
    if (sc.procMount !== undefined && sc.procMount !== "Default") out.push(`${where}: procMount ${sc.procMount}`);
    if (sc.appArmorProfile?.type === "Unconfined") out.push(`${where}: AppArmor profile Unconfined`);
    if (sc.windowsOptions?.hostProcess === true) out.push(`${where}: hostProcess`);
    // restricted: no privilege escalation, non-root, seccomp, capabilities
    if (sc.allowPrivilegeEscalation !== false) out.push(`${where}: allowPrivilegeEscalation is not false`);
    const nonRoot = sc.runAsNonRoot ?? psc.runAsNonRoot;
    if (nonRoot !== true) out.push(`${where}: runAsNonRoot is not true (container or pod)`);
    if (sc.runAsUser === 0) out.push(`${where}: runAsUser is 0`);
    const seccomp = (sc.seccompProfile?.type as string | undefined) ?? podSeccomp;
    if (seccomp !== "RuntimeDefault" && seccomp !== "Localhost") out.push(`${where}: seccompProfile is ${seccomp ?? "unset"}, not RuntimeDefault or Localhost`);
    const drop = (sc.capabilities?.drop ?? []) as string[];
    if (!drop.includes("ALL")) out.push(`${where}: capabilities do not drop ALL`);
    for (const cap of (sc.capabilities?.add ?? []) as string[]) if (!ADDABLE_CAPABILITIES.has(cap)) out.push(`${where}: adds capability ${cap}`);
    // beyond the standard: a read-only root filesystem
    if (sc.readOnlyRootFilesystem !== true) out.push(`${where}: readOnlyRootFilesystem is not true`);
  }
  return out;
}

/** Paths each container can write: its volume mounts not marked readOnly whose volume is not read-only. */
export function writableMounts(pod: Obj, container: Obj): string[] {
  const volumes = new Map(((pod.volumes ?? []) as Obj[]).map((v) => [v.name as string, v]));
  return ((container.volumeMounts ?? []) as Obj[])
    .filter((m) => m.readOnly !== true && volumes.get(m.name)?.secret === undefined && volumes.get(m.name)?.configMap === undefined)
    .map((m) => m.mountPath as string);
}
