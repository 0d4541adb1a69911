-- SEMODEL.db schema: the one definition of the tables. `sysload build` creates it and then runs the
-- data in cfg/SEMODEL.sql; `sysload check` compares a database against it. Documented in docs/semodel.md.
-- Columns are deliberately loose (no CHECK, nullable): the validator reports every broken value with its
-- table, row and column instead of SQLite refusing the first one.

-- RTUs: acquisition (RTUTYPE 0, Modbus TCP devices or IEC 104 RTUs) and forwarding (RTUTYPE 2, servers for SCADA masters).
CREATE TABLE T004_RTU (
    RTUID      INTEGER PRIMARY KEY,
    NAME       TEXT,
    RTUTYPE    INTEGER,          -- 0 acquisition, 2 forwarding
    PROTOCOL   TEXT,             -- RTUTYPE 0: 'modbus_tcp' (or NULL), 'iec104'; RTUTYPE 2: 'se104s', 'modbus_trains', 'sefeps'
    POLLMS     INTEGER,          -- RTUTYPE 0: poll period in ms; NULL: [timers] poll_ms of fep-ha.cfg
                                 --   iec104: general interrogation period in ms; NULL: [iec104] gi_period_s
    TIMEOUTMS  INTEGER,          -- RTUTYPE 0: request timeout in ms; NULL: 1000
                                 --   iec104: t1 (confirmation timeout) in ms; NULL: [iec104] t1_s
    LISTENPORT INTEGER,          -- RTUTYPE 2: TCP port the server listens on, on both nodes
    ADDRESS    INTEGER,          -- RTUTYPE 2: IEC 104 common address / Modbus unit id; NULL: 1
    ALLOW      TEXT,             -- RTUTYPE 2: optional comma-separated client IP addresses/networks allowed
    INFLIGHT   INTEGER           -- RTUTYPE 0 modbus_tcp: requests outstanding at most, 1..16; NULL: 1
);

-- Channels of acquisition RTUs: channel 1 is the preferred one, channel 2 the alternative.
CREATE TABLE T010_CHANNEL (
    RTUID   INTEGER,
    CHANNO  INTEGER,             -- 1 or 2
    HOST    TEXT,                -- IPv4/IPv6 address or host name of the device on this channel
    PORT    INTEGER,             -- TCP port, usually 502
    UNITID  INTEGER,             -- Modbus unit id, 0..255; iec104: common address of ASDU, 1..65534 (NULL: 1)
    PRIMARY KEY (RTUID, CHANNO)
);

-- Acquisition points (and control targets) of acquisition RTUs.
CREATE TABLE T011_POINT (
    PNTID     INTEGER PRIMARY KEY,   -- unique across T011_POINT and T036_VTPNT
    RTUID     INTEGER,
    KIND      TEXT,                  -- AI, DI, ACC (polled); DO, AO (control targets)
    NAME      TEXT,
    AREA      TEXT,                  -- co, di, hr, ir (iec104: NULL)
    ADDRESS   INTEGER,               -- 0-based Modbus address; iec104: information object address (IOA)
    DATATYPE  TEXT,                  -- bool, int16, uint16, int32, uint32, float32; iec104: ASDU type name
    BYTEORDER TEXT,                  -- big (default) or little: bytes inside a register
    WORDORDER TEXT,                  -- big (default) or little: registers of a 32-bit value
    BITINDEX  INTEGER,               -- bool in hr/ir: bit 0..15 of the register
    SCALE     REAL,                  -- engineering = raw * SCALE + OFFSET; NULL: 1
    OFFSET    REAL,                  -- NULL: 0
    DEADBAND  REAL,                  -- AI: absolute change below which nothing is written; NULL: 0
    CTLMODE   TEXT                   -- iec104 DO/AO: 'direct' (NULL) or 'sbo' (select before operate)
);

-- Virtual points: one per acquisition RTU link, val = vala || valb (node A's and B's link state).
CREATE TABLE T036_VTPNT (
    VPID   INTEGER PRIMARY KEY,      -- unique across T011_POINT and T036_VTPNT
    RTUID  INTEGER,                  -- the acquisition RTU whose link it reflects
    NAME   TEXT
);

-- The two FEP nodes: IP1 is node A, IP2 is node B.
CREATE TABLE T020_UNION (
    ID   INTEGER PRIMARY KEY,
    IP1  TEXT,
    IP2  TEXT
);

-- Forwarding points: each maps a source point to an address of a forwarding RTU's protocol.
-- ADDR: se104s information object address; modbus_trains 0-based address in the table's area;
-- sefeps point index. TYPE: se104s ASDU type name; modbus_trains data type; sefeps NULL.
-- COEF: forwarded = source * COEF (se104s normalised/scaled values); NULL: 1.
CREATE TABLE T005_ZFAI (ZFID INTEGER PRIMARY KEY, RTUID INTEGER, SRCID INTEGER, ADDR INTEGER, TYPE TEXT, COEF REAL);
CREATE TABLE T006_ZFDI (ZFID INTEGER PRIMARY KEY, RTUID INTEGER, SRCID INTEGER, ADDR INTEGER, TYPE TEXT, COEF REAL);
CREATE TABLE T007_ZFACC (ZFID INTEGER PRIMARY KEY, RTUID INTEGER, SRCID INTEGER, ADDR INTEGER, TYPE TEXT, COEF REAL);
CREATE TABLE T008_ZFDO (ZFID INTEGER PRIMARY KEY, RTUID INTEGER, SRCID INTEGER, ADDR INTEGER, TYPE TEXT, COEF REAL);
CREATE TABLE T009_ZFAO (ZFID INTEGER PRIMARY KEY, RTUID INTEGER, SRCID INTEGER, ADDR INTEGER, TYPE TEXT, COEF REAL);
