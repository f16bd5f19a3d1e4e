/**
 * Throwaway certificates for the TLS and mTLS tests, made with the system's `openssl`: a CA, and leaf
 * certificates it signs for 127.0.0.1 and localhost, usable as server and client certificates (as a
 * moela service uses its one cert both ways). P-256 keys: fast to make. Call removeTestCerts() after.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCa {
  readonly dir: string;
  /** PEM files. */
  readonly caCert: string;
  readonly caKey: string;
}

export interface TestLeaf {
  readonly cert: string;
  readonly key: string;
}

const dirs: string[] = [];

function openssl(args: readonly string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** Whether `openssl` runs here. */
export function hasOpenssl(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** A fresh self-signed CA in its own temporary folder. */
export function makeTestCa(name = "moela-test-ca"): TestCa {
  const dir = mkdtempSync(join(tmpdir(), "moela-tls-"));
  dirs.push(dir);
  openssl(
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
    ],
    dir,
  );
  return { dir, caCert: join(dir, "ca.pem"), caKey: join(dir, "ca.key") };
}

/** A certificate signed by `ca` for 127.0.0.1 and localhost, good for server and client authentication. */
export function makeTestLeaf(ca: TestCa, name: string): TestLeaf {
  const ext = join(ca.dir, `${name}.ext`);
  writeFileSync(ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n");
  openssl(
    ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`],
    ca.dir,
  );
  openssl(
    ["x509", "-req", "-in", `${name}.csr`, "-CA", ca.caCert, "-CAkey", ca.caKey, "-CAcreateserial", "-out", `${name}.pem`, "-days", "2", "-extfile", ext],
    ca.dir,
  );
  return { cert: join(ca.dir, `${name}.pem`), key: join(ca.dir, `${name}.key`) };
}

/** Remove every folder made here. */
export function removeTestCerts(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}
