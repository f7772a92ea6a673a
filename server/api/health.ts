// A health endpoint for load balancers and container health checks: 200 when the database answers.
import { sql } from "drizzle-orm";
import { MatrixError } from "../http/errors.ts";
import { route } from "../http/route.ts";

export const health = route({
  method: "GET",
  path: "/health",
  auth: "none",
  // Load balancers must still see an overloaded process as alive (it is: it answers what it admits).
  admission: "exempt",
  async handler({ c }, { db }) {
    try {
      await db.execute(sql`select 1`);
    } catch {
      throw new MatrixError(503, "M_UNKNOWN", "Database unavailable");
    }
    return c.text("OK");
  },
});
