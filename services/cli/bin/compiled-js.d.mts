/** The folder beside each package's src/ that holds its compiled JavaScript. */
export declare const OUT_DIR: string;
/**
 * The file URL of `services/cli/.compiled/main.js` under `root`, compiled first when a source changed; undefined when
 * the CLI should run from its TypeScript sources instead.
 */
export declare function compiledCli(root: string): Promise<string | undefined>;
